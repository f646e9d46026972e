"""What organizers do to evaluations: rerun, cancel, requeue, change priority, disqualify.

Every action goes through `submission_transition` and lands in the audit trail.
"""

from __future__ import annotations

import logging

from django.db import transaction

from evaluation.models import EvaluationJob, Submission
from evaluation.services.jobs import requeue_locked
from evaluation.services.queueing import current_job, evaluation_enqueue
from evaluation.services.transitions import submission_transition
from portal.errors import Conflict, ServiceError

logger = logging.getLogger(__name__)
S = Submission.Status
J = EvaluationJob.State


def audit(*, actor, action: str, submission: Submission, reason: str = "", data: dict | None = None) -> None:
    """Write one audit event about a submission through portal's audit trail."""
    from portal.services.audit import audit_record

    audit_record(actor=actor, action=action, obj=submission, team=submission.team, reason=reason, data=data or {})


def _revoke(task_id: str) -> None:
    """Stop a running evaluation task now (prefork pools); the heartbeat stops it too (solo pools)."""
    if not task_id:
        return
    from portal.celery import app

    def send() -> None:
        try:
            app.control.revoke(task_id, terminate=True, signal="SIGTERM")
        except Exception:  # the broker being down must not block an organizer's cancel
            logger.exception("Could not revoke task %s", task_id)

    transaction.on_commit(send)


def _stop_job_locked(submission_id: int, new_state: str) -> str:
    """Mark the submission's current job as ended; returns the task id to revoke if it ran."""
    job = (
        EvaluationJob.objects.select_for_update()
        .filter(submission_id=submission_id, state__in=[J.PENDING, J.RUNNING])
        .first()
    )
    if job is None:
        return ""
    task_id = job.task_id if job.state == J.RUNNING else ""
    job.state = new_state
    job.save(update_fields=["state"])
    return task_id


def submission_cancel(*, submission_id: int, actor, reason: str = "") -> Submission:
    """Cancel a queued or running evaluation; a running task is revoked and stores nothing more."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status not in (S.QUEUED, S.RUNNING):
            raise Conflict(
                f"Only a queued or running submission can be cancelled; #{submission_id} is {submission.status}."
            )
        task_id = _stop_job_locked(submission_id, J.CANCELLED)
        submission = submission_transition(
            submission_id=submission_id, to=S.CANCELLED, reason=reason or "Cancelled.", actor=actor
        )
        _revoke(task_id)
        audit(actor=actor, action="submission.cancel", submission=submission, reason=reason, data={"task_id": task_id})
    return submission


def submission_rerun(*, submission_id: int, actor, reason: str = "") -> Submission:
    """Evaluate a finished (scored, failed or cancelled) submission again, from scratch."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status not in (S.SCORED, S.FAILED, S.CANCELLED):
            raise Conflict(
                f"Only a scored, failed or cancelled submission can be rerun; #{submission_id} is {submission.status}."
            )
        if not submission.model_dir:
            raise ServiceError(f"Submission #{submission_id} has no validated model to evaluate.")
        _stop_job_locked(submission_id, J.CANCELLED)
        # A fresh job: the → QUEUED listener creates it and sends the slot message.
        submission = submission_transition(
            submission_id=submission_id, to=S.QUEUED, reason=reason or "Rerun requested by the organizers.", actor=actor
        )
        audit(actor=actor, action="submission.rerun", submission=submission, reason=reason)
    return submission


def submission_requeue(*, submission_id: int, actor, reason: str = "") -> Submission:
    """Put a running job back in the queue (keeping finished suites), or resend a queued one's slot."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        if submission.status == S.RUNNING:
            job = EvaluationJob.objects.select_for_update().filter(submission_id=submission_id, state=J.RUNNING).first()
            if job is None:
                raise Conflict(f"Submission #{submission_id} has no running job.")
            task_id = job.task_id
            requeue_locked(job, reason=reason or "Put back in the queue by the organizers.", actor=actor)
            _revoke(task_id)
        elif submission.status == S.QUEUED:
            job = current_job(submission_id)
            if job and job.retry_at:
                job.retry_at = None
                job.save(update_fields=["retry_at"])
            evaluation_enqueue(submission_id=submission_id)
        else:
            raise Conflict(
                f"Only a queued or running submission can be requeued; #{submission_id} is {submission.status}."
            )
        submission.refresh_from_db()
        audit(actor=actor, action="submission.requeue", submission=submission, reason=reason)
    return submission


def submission_set_priority(*, submission_id: int, priority: int, actor, reason: str = "") -> Submission:
    """Higher priority runs earlier within its track's queue (before the teams' round robin)."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        old = submission.priority
        submission.priority = int(priority)
        submission.save(update_fields=["priority"])
        audit(
            actor=actor,
            action="submission.priority",
            submission=submission,
            reason=reason,
            data={"from": old, "to": submission.priority},
        )
    return submission


def submission_disqualify(*, submission_id: int, actor, reason: str) -> Submission:
    """Disqualify with a reason the team sees; stops a running evaluation and leaves the standings."""
    if not (reason or "").strip():
        raise ServiceError("Give the reason for the disqualification; the team will read it.", field="reason")
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission_id)
        task_id = _stop_job_locked(submission_id, J.CANCELLED)
        submission = submission_transition(
            submission_id=submission_id, to=S.DISQUALIFIED, reason=reason.strip(), actor=actor
        )
        _revoke(task_id)
        audit(actor=actor, action="submission.disqualify", submission=submission, reason=reason)
    return submission
