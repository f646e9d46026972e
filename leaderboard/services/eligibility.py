"""Student eligibility is fixed into the standings when they are computed (badge, student awards): when a
team's eligibility may have changed, the tracks where it has scored submissions are recomputed."""

from collections.abc import Iterable

from evaluation.models import Submission


def standings_recompute_for_teams(team_ids: Iterable[int], *, trigger: str) -> list[int]:
    """Enqueue one recomputation per track where one of these teams has a scored submission; the track ids.

    Call it after the change committed (the task reads the committed eligibility)."""
    from ..tasks import standings_recompute_task

    track_ids = sorted(
        set(
            Submission.objects.filter(team_id__in=list(team_ids), status=Submission.Status.SCORED).values_list(
                "track_id", flat=True
            )
        )
    )
    for track_id in track_ids:
        standings_recompute_task.delay(track_id, trigger)
    return track_ids
