"""Recompute a track's standings when one of its submissions enters or leaves the scored state."""

from evaluation.models import Submission


def recompute_on_scored_change(submission_id: int, from_status: str, to_status: str) -> None:
    # Runs after the transition's commit (see evaluation.services.transitions.on_transition).
    if Submission.Status.SCORED not in (from_status, to_status):
        return
    track_id = Submission.objects.filter(pk=submission_id).values_list("track_id", flat=True).first()
    if track_id is None:
        return
    from .tasks import standings_recompute_task

    standings_recompute_task.delay(track_id, f"submission #{submission_id}: {from_status or '∅'} → {to_status}")
