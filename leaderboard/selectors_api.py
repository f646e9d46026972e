"""Permission-aware reads of stored standings for the API (nothing here recomputes a score).

Visibility, from portal.permissions: open-suite results are public; hidden-suite scores (and the final
score and rank, which combine them) only once an organizer revealed them, organizers always; hidden-suite
scenario names never reach participants.
"""

from __future__ import annotations

from django.db.models import F, QuerySet

from leaderboard.models import ASPECT_NAMES, Standing, StandingsSnapshot
from portal import permissions
from portal.models import Track


def _aspects(standing: Standing, suite: str) -> dict[str, float | None]:
    return {aspect: standing.aspect(suite, aspect) for aspect in ASPECT_NAMES}


def standing_scores(standing: Standing, *, hidden_visible: bool, finalized: bool) -> dict:
    """One stored standing as the API shows it to someone who may (or may not) see hidden results."""
    return {
        "final": standing.final_score if hidden_visible else None,
        "open_score": standing.open_score,
        "hidden_score": standing.hidden_score if hidden_visible else None,
        "open": _aspects(standing, "open"),
        "hidden": _aspects(standing, "hidden") if hidden_visible else None,
        "rank": (standing.rank if standing.is_team_entry else standing.rank_if_entry) if hidden_visible else None,
        "is_team_entry": standing.is_team_entry,
        "hidden_visible": hidden_visible,
        "provisional": not finalized,
    }


def submission_scores(*, user, submission) -> dict | None:
    """The submission's scores in its track's current standings, shaped for `user`; None if not scored."""
    standing = (
        Standing.objects.filter(submission=submission, snapshot__is_current=True)
        .select_related("snapshot__track__challenge")
        .first()
    )
    if standing is None:
        return None
    track = standing.snapshot.track
    return standing_scores(
        standing,
        hidden_visible=permissions.can_see_hidden_scores(user, track.challenge),
        finalized=track.is_finalized,
    )


def current_snapshot(track: Track) -> StandingsSnapshot | None:
    return StandingsSnapshot.objects.current().filter(track=track).first()


def leaderboard_standings(*, user, track: Track) -> QuerySet[Standing]:
    """The track's current team entries visible to `user`: disqualified entries only for organizers.

    Ordered by final rank when hidden results are visible to `user`, else by open-suite score.
    """
    queryset = Standing.objects.filter(
        snapshot__track=track, snapshot__is_current=True, is_team_entry=True
    ).select_related("team", "submission")
    if not permissions.is_organizer(user):
        queryset = queryset.exclude(submission__status="disqualified")
    if permissions.can_see_hidden_scores(user, track.challenge):
        return queryset.order_by(F("rank").asc(nulls_last=True), F("final_score").desc(nulls_last=True), "id")
    return queryset.order_by(F("open_score").desc(nulls_last=True), "submitted_at", "id")


# Columns a client may sort by; hidden ones only where hidden results are visible.
COMPUTE_COLUMNS = (
    "finetune_gpu_hours",
    "eval_gpu_seconds",
    "peak_gpu_memory_bytes",
    "parameter_count",
    "output_tokens_per_second",
)
PUBLIC_SORT = ("open_score", *(f"open_{a}" for a in ASPECT_NAMES), *COMPUTE_COLUMNS, "submitted_at")
HIDDEN_SORT = ("rank", "final_score", "hidden_score", *(f"hidden_{a}" for a in ASPECT_NAMES))
PARETO_X = ("eval_gpu_seconds", "finetune_gpu_hours", "peak_gpu_memory_bytes", "parameter_count")


def sortable_columns(*, hidden_visible: bool) -> tuple[str, ...]:
    return PUBLIC_SORT + (HIDDEN_SORT if hidden_visible else ())


def pareto_y_columns(*, hidden_visible: bool) -> tuple[str, ...]:
    public = ("open_score", *(f"open_{a}" for a in ASPECT_NAMES))
    hidden = ("final_score", "hidden_score", *(f"hidden_{a}" for a in ASPECT_NAMES))
    return public + (hidden if hidden_visible else ())


def breakdown_visible(breakdown: dict, *, user) -> dict:
    """Per-scenario breakdown: hidden-suite scenario names only for organizers."""
    if permissions.can_see_hidden_details(user):
        return breakdown or {}
    return {suite: data for suite, data in (breakdown or {}).items() if suite != "hidden"}


def track_medians(*, track: Track, hidden_visible: bool) -> dict:
    """Median of each aspect over the track's current team entries (no disqualified ones)."""
    import statistics

    rows = list(
        Standing.objects.filter(snapshot__track=track, snapshot__is_current=True, is_team_entry=True)
        .exclude(submission__status="disqualified")
        .values(*(f"{suite}_{a}" for suite in ("open", "hidden") for a in ASPECT_NAMES), "open_score", "final_score")
    )
    columns = ["open_score", *(f"open_{a}" for a in ASPECT_NAMES)]
    if hidden_visible:
        columns += ["final_score", *(f"hidden_{a}" for a in ASPECT_NAMES)]
    out = {}
    for column in columns:
        values = [row[column] for row in rows if row[column] is not None]
        out[column] = statistics.median(values) if values else None
    return out


def submission_public_standing(*, user, submission_id: int) -> Standing | None:
    """The current standing of a submission for its analysis: public for non-disqualified team entries,
    any of its own team's scored submissions for members, all for organizers."""
    standing = (
        Standing.objects.filter(submission_id=submission_id, snapshot__is_current=True)
        .select_related("snapshot__track__challenge", "team", "submission__team", "submission__track")
        .first()
    )
    if standing is None:
        return None
    submission = standing.submission
    if permissions.can_view_submission(user, submission):
        return standing
    if standing.is_team_entry and submission.status != "disqualified":
        return standing
    return None
