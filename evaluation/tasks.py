"""Celery tasks of evaluation/: thin, they take ids and call one service."""

from __future__ import annotations

import logging

from celery import shared_task

from evaluation.models import Submission
from evaluation.services.transitions import submission_transition
from evaluation.services.uploads import uploads_expire
from evaluation.services.validation import submission_validate

logger = logging.getLogger(__name__)

VALIDATION_RETRIES = 3


@shared_task(
    bind=True, name="evaluation.submission_validate", queue="cpu", acks_late=True, max_retries=VALIDATION_RETRIES
)
def submission_validate_task(self, submission_id: int) -> None:
    try:
        submission_validate(submission_id=submission_id)
    except Exception as exc:
        if self.request.retries < VALIDATION_RETRIES and not self.request.is_eager:
            raise self.retry(exc=exc, countdown=30 * 2**self.request.retries)
        logger.exception("validation of submission %s failed for a reason of ours", submission_id)
        if not Submission.objects.filter(pk=submission_id, status=Submission.Status.VALIDATING).exists():
            return
        submission_transition(
            submission_id=submission_id,
            to=Submission.Status.FAILED,
            failure_kind=Submission.FailureKind.INFRA,
            reason="The validator hit an internal error; organizers were notified. This does not count against your quota.",
        )


@shared_task(name="evaluation.uploads_expire", queue="cpu")
def uploads_expire_task() -> int:
    return uploads_expire()
