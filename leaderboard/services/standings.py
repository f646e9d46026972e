"""Recompute, freeze and annotate a track's standings. Every write of the leaderboard app is here."""

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from evaluation.models import Submission
from portal.errors import Conflict, NotFound
from portal.models import Prize, Track
from portal.services.audit import audit_record

from .. import selectors
from ..caching import forget_track_state
from ..models import ASPECT_NAMES, SUITES, Reproduction, Standing, StandingsSnapshot, TrackScoringSettings
from ..ranking import awards, rank_entries, sort_key
from ..scoring import ScoringConfig, mark_team_entries, score_track

logger = logging.getLogger(__name__)


def scoring_config_for_track(track: Track) -> ScoringConfig:
    challenge = track.challenge
    references = (
        TrackScoringSettings.objects.filter(track=track).values_list("efficiency_references", flat=True).first()
    )
    return ScoringConfig(
        mode=challenge.scoring_mode,
        suite_weights={"open": challenge.open_weight, "hidden": challenge.hidden_weight},
        efficiency_references=references or {},
        # Per-metric rows would make each snapshot grow with suites × submissions; the per-scenario
        # breakdown is kept, and per-metric values stay in the stored results.
        include_metrics=False,
    )


def _compute_columns(suites: dict[str, Any], submission: Submission) -> dict[str, Any]:
    figures = [(r or {}).get("efficiency") or {} for r in suites.values()]

    def present(name: str) -> list[float]:
        return [f[name] for f in figures if f.get(name) is not None]

    gpu, peak, tps, params = (
        present("gpu_seconds"),
        present("peak_gpu_memory_bytes"),
        present("output_tokens_per_second"),
        present("parameter_count"),
    )
    return {
        "eval_gpu_seconds": sum(gpu) if gpu else None,
        "peak_gpu_memory_bytes": int(max(peak)) if peak else None,
        "output_tokens_per_second": sum(tps) / len(tps) if tps else None,
        "parameter_count": int(params[0]) if params else submission.parameter_count,
        "finetune_gpu_hours": submission.finetune_gpu_hours,
        "base_model_name": submission.base_model.name,
        "submitted_at": submission.created_at,
    }


def _prize_rows(track: Track) -> list[dict[str, Any]]:
    return [
        {"kind": p.kind, "place": p.place, "amount_usd": p.amount_usd, "count": p.count}
        for p in Prize.objects.filter(track=track)
    ]


def _open_ranks(ranked: list[dict[str, Any]], scores: dict[int, dict[str, Any]]) -> dict[int, int]:
    """Ranks of the ranked team entries by open-suite score alone (then earlier submission, then id):
    what the public board shows before the hidden results are revealed."""
    rows = []
    for row in ranked:
        if row["rank"] is None:
            continue
        open_score = (scores[row["submission_id"]]["suites"].get("open") or {}).get("score")
        rows.append({**row, "final_score": open_score, "hidden_score": None})
    return {r["submission_id"]: i + 1 for i, r in enumerate(sorted(rows, key=sort_key))}


@transaction.atomic
def standings_recompute_for_track(track_id: int, *, trigger: str = "") -> StandingsSnapshot:
    """Score every scored submission of the track and store a new current snapshot.

    The previous snapshots stay as history. A finalized track is frozen: its current snapshot is
    returned unchanged. The track row is locked so two recomputations never interleave.
    """
    try:
        track = Track.objects.select_for_update().select_related("challenge").get(pk=track_id)
    except Track.DoesNotExist:
        raise NotFound(f"Track {track_id} does not exist.")
    current = StandingsSnapshot.objects.current().filter(track=track).first()
    if current is not None and current.is_frozen:
        return current

    results = {r["submission_id"]: r for r in selectors.track_scored_results(track_id)}
    submissions = {
        s.pk: s
        for s in Submission.objects.filter(pk__in=list(results), track_id=track_id, status=Submission.Status.SCORED)
        .select_related("base_model")
        .only("pk", "team_id", "is_final", "created_at", "finetune_gpu_hours", "parameter_count", "base_model__name")
    }
    entries = mark_team_entries(
        [
            {
                "submission_id": s.pk,
                "team_id": s.team_id,
                "is_chosen": s.is_final,
                "submitted_at": s.created_at,
                "suites": results[s.pk].get("suites") or {},
            }
            for s in submissions.values()
        ]
    )
    config = scoring_config_for_track(track)
    scores = {r["submission_id"]: r for r in score_track(entries, config)}

    reproductions = dict(
        Reproduction.objects.filter(submission_id__in=list(submissions)).values_list("submission_id", "status")
    )
    eligible = selectors.student_eligible_team_ids({s.team_id for s in submissions.values()})
    ranked = rank_entries(
        [
            {
                "submission_id": sid,
                "team_id": score["team_id"],
                "is_team_entry": score["is_team_entry"],
                "final_score": score["final_score"],
                "hidden_score": (score["suites"].get("hidden") or {}).get("score"),
                "submitted_at": submissions[sid].created_at,
                "student_eligible": score["team_id"] in eligible,
                "reproduction": reproductions.get(sid),
            }
            for sid, score in scores.items()
        ]
    )
    award_result = awards(ranked, _prize_rows(track))
    open_ranks = _open_ranks(ranked, scores)

    StandingsSnapshot.objects.filter(track=track, is_current=True).update(is_current=False)
    snapshot = StandingsSnapshot.objects.create(
        track=track,
        trigger=trigger[:200],
        scoring_mode=config.mode,
        suite_weights=dict(config.suite_weights),
        entry_count=sum(1 for r in ranked if r["rank"] is not None),
        awards=award_result,
    )
    rows = []
    for row in ranked:
        sid = row["submission_id"]
        score = scores[sid]
        suites = score["suites"]
        aspects = {
            f"{suite}_{aspect}": (suites.get(suite) or {}).get("aspects", {}).get(aspect)
            for suite in SUITES
            for aspect in ASPECT_NAMES
        }
        rows.append(
            Standing(
                snapshot=snapshot,
                submission_id=sid,
                team_id=row["team_id"],
                is_team_entry=row["is_team_entry"],
                rank=row["rank"],
                rank_if_entry=row["rank_if_entry"],
                open_rank=open_ranks.get(sid),
                final_score=score["final_score"],
                open_score=(suites.get("open") or {}).get("score"),
                hidden_score=row["hidden_score"],
                opponents=score["opponents"],
                breakdown={s: {"weight": v["weight"], "scenarios": v["scenarios"]} for s, v in suites.items()},
                student_eligible=row["student_eligible"],
                reproduction=row["reproduction"] or "",
                **aspects,
                **_compute_columns(results[sid].get("suites") or {}, submissions[sid]),
            )
        )
    Standing.objects.bulk_create(rows, batch_size=1000)
    forget_track_state(track.slug)
    logger.info("Standings of track %s recomputed: %d submissions (%s)", track.slug, len(rows), trigger)
    return snapshot


@transaction.atomic
def standings_finalize_track(*, track_id: int, actor) -> StandingsSnapshot:
    """Recompute one last time, then freeze: the page announces the winners."""
    track = Track.objects.select_for_update().get(pk=track_id)
    if track.is_finalized:
        raise Conflict(f"{track} is already finalized.")
    snapshot = standings_recompute_for_track(track_id, trigger="finalized")
    now = timezone.now()
    snapshot.is_frozen, snapshot.frozen_at = True, now
    snapshot.save(update_fields=["is_frozen", "frozen_at"])
    track.finalized_at, track.finalized_by = now, actor
    track.save(update_fields=["finalized_at", "finalized_by"])
    forget_track_state(track.slug)
    audit_record(
        actor=actor,
        action="track.finalize",
        obj=track,
        data={"snapshot_id": snapshot.pk, "awards": snapshot.awards.get("awards", [])},
    )
    return snapshot


@transaction.atomic
def reproduction_record(*, submission_id: int, status: str, notes: str = "", actor) -> Reproduction:
    """Record a reproduction's outcome; the track's standings (and awards) are recomputed after commit."""
    if status not in Reproduction.Status.values:
        raise Conflict(f"Unknown reproduction status {status!r}.")
    try:
        submission = Submission.objects.select_related("track").get(pk=submission_id)
    except Submission.DoesNotExist:
        raise NotFound(f"Submission {submission_id} does not exist.")
    if submission.track.is_finalized:
        raise Conflict(f"{submission.track} is finalized; its awards can no longer change.")
    reproduction, _ = Reproduction.objects.update_or_create(
        submission=submission,
        defaults={
            "team_id": submission.team_id,
            "status": status,
            "notes": notes,
            "recorded_by": actor,
            "recorded_at": timezone.now(),
        },
    )
    audit_record(
        actor=actor,
        action="reproduction.record",
        team=submission.team,
        obj=submission,
        reason=notes,
        data={"status": status},
    )
    from ..tasks import standings_recompute_task

    track_id = submission.track_id
    transaction.on_commit(
        lambda: standings_recompute_task.delay(track_id, f"reproduction of #{submission_id}: {status}")
    )
    return reproduction
