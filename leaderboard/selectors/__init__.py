"""Reads of the leaderboard: stored standings, and the adapter to the stored evaluation results."""

from typing import Any

from django.db.models import F, QuerySet

from portal.models import Team

from ..models import StandingsSnapshot


def track_scored_results(track_id: int) -> list[dict[str, Any]]:
    """ADAPTER to the evaluation app's stored results — the one place that wiring happens.

    Returns, for every scored submission of the track, {"submission_id", "team_id",
    "suites": {"open": result, "hidden": result}}, a result being the engine's result-document
    subset (runs, records, efficiency) that leaderboard.scoring reads.
    """
    from evaluation.selectors import scored_results_for_track  # defined by the pipeline

    return scored_results_for_track(track_id)


def student_eligible_team_ids(team_ids) -> set[int]:
    """Teams whose every member is a verified student: portal's one rule, applied set-wise."""
    return set(
        Team.objects.filter(pk__in=list(team_ids))
        .with_eligibility()
        .filter(student_eligible=True)
        .values_list("pk", flat=True)
    )


def standings_current_snapshot(track_id: int) -> StandingsSnapshot | None:
    return StandingsSnapshot.objects.current().filter(track_id=track_id).first()


def standings_current_for_track(track_id: int, *, entries_only: bool = True) -> QuerySet:
    """The current standings of a track, ranked first (team entries), then by final score."""
    from ..models import Standing

    qs = Standing.objects.filter(snapshot__track_id=track_id, snapshot__is_current=True).select_related("team")
    if entries_only:
        qs = qs.filter(is_team_entry=True)
    return qs.order_by(F("rank").asc(nulls_last=True), F("final_score").desc(nulls_last=True), "id")


def standings_history_for_track(track_id: int) -> QuerySet:
    return StandingsSnapshot.objects.filter(track_id=track_id).order_by("-computed_at", "-id")


from .analysis import scenario_table, submission_analysis  # noqa: E402
from .board import (  # noqa: E402
    Board,
    Viewer,
    awards_for_snapshot,
    board_rows_queryset,
    current_challenge,
    disqualified_for_track,
    leaderboard_board,
    prize_table,
    snapshot_current,
    standing_breakdown,
    standing_row,
    track_get,
    tracks_with_leaders,
    viewer_for,
)
from .exports import standings_export  # noqa: E402
from .pareto import pareto_axes, pareto_data  # noqa: E402
from .scores import standing_scores, submission_scores, submission_track  # noqa: E402

__all__ = [
    "Board",
    "Viewer",
    "awards_for_snapshot",
    "board_rows_queryset",
    "current_challenge",
    "disqualified_for_track",
    "leaderboard_board",
    "pareto_axes",
    "pareto_data",
    "prize_table",
    "scenario_table",
    "snapshot_current",
    "standing_breakdown",
    "standing_row",
    "standing_scores",
    "standings_current_for_track",
    "standings_current_snapshot",
    "standings_export",
    "standings_history_for_track",
    "student_eligible_team_ids",
    "submission_analysis",
    "submission_scores",
    "submission_track",
    "track_get",
    "track_scored_results",
    "tracks_with_leaders",
    "viewer_for",
]
