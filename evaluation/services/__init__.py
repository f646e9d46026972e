from evaluation.services.submissions import (
    Quota,
    QuotaExceeded,
    SubmissionsClosed,
    submission_create,
    submission_final_entry,
    submission_quota,
    submission_set_final,
)
from evaluation.services.transitions import ALLOWED_TRANSITIONS, submission_transition

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Quota",
    "QuotaExceeded",
    "SubmissionsClosed",
    "submission_create",
    "submission_final_entry",
    "submission_quota",
    "submission_set_final",
    "submission_transition",
]
