"""The one function that changes a submission's status."""

from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from evaluation.models import Submission, SubmissionEvent
from portal.errors import Conflict

S = Submission.Status

ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    S.UPLOADING: {S.VALIDATING, S.CANCELLED, S.FAILED},
    S.VALIDATING: {S.QUEUED, S.FAILED, S.CANCELLED},
    S.QUEUED: {S.RUNNING, S.CANCELLED, S.FAILED, S.DISQUALIFIED},
    # RUNNING -> QUEUED: a redelivered or requeued job.
    S.RUNNING: {S.SCORED, S.FAILED, S.QUEUED, S.CANCELLED, S.DISQUALIFIED},
    S.SCORED: {S.QUEUED, S.DISQUALIFIED},
    S.FAILED: {S.QUEUED, S.DISQUALIFIED},
    S.CANCELLED: {S.QUEUED, S.DISQUALIFIED},
    S.DISQUALIFIED: set(),
}

# Callbacks run after the commit of every transition: (submission_id, from_status, to_status).
_listeners: list[Callable[[int, str, str], None]] = []


def on_transition(listener: Callable[[int, str, str], None]) -> Callable[[int, str, str], None]:
    """Register a side effect (enqueue a task, send an e-mail) to run after a transition commits."""
    _listeners.append(listener)
    return listener


def submission_transition(
    *,
    submission_id: int,
    to: str,
    reason: str = "",
    actor=None,
    failure_kind: str = "",
    update: dict | None = None,
) -> Submission:
    """Move a submission to `to` under a row lock and write a history row.

    Returns quietly if it is already there (a repeated job); raises Conflict for a move
    the table forbids. `update` sets other fields in the same save. Side effects run on commit.
    """
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        current = submission.status
        if current == to:
            return submission
        if to not in ALLOWED_TRANSITIONS[current]:
            raise Conflict(
                f"Submission #{submission_id} is {submission.get_status_display().lower()}; "
                f"it cannot become {S(to).label.lower()}."
            )
        fields = ["status", "status_reason", "status_changed_at", "failure_kind"]
        submission.status = to
        submission.status_reason = reason
        submission.status_changed_at = timezone.now()
        submission.failure_kind = failure_kind if to == S.FAILED else ""
        for name, value in (update or {}).items():
            setattr(submission, name, value)
            fields.append(name)
        submission.save(update_fields=fields)
        SubmissionEvent.objects.create(
            submission=submission, from_status=current, to_status=to, reason=reason, actor=actor
        )
        for listener in list(_listeners):
            transaction.on_commit(lambda listener=listener: listener(submission_id, current, to))
    return submission
