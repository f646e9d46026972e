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

# The evaluation pipeline (issue 5); importing these registers its transition listeners.
from evaluation.services import notifications as _notifications  # noqa: E402,F401
from evaluation.services import queueing as _queueing  # noqa: E402,F401
from evaluation.services.jobs import evaluation_process_slot, evaluation_reap_stale_jobs  # noqa: E402,F401
from evaluation.services.notifications import standings_recompute_schedule, submission_notify  # noqa: E402,F401
from evaluation.services.organizer import (  # noqa: E402,F401
    submission_cancel,
    submission_disqualify,
    submission_requeue,
    submission_rerun,
    submission_set_priority,
)
from evaluation.services.queueing import evaluation_enqueue  # noqa: E402,F401

__all__ += [
    "evaluation_enqueue",
    "evaluation_process_slot",
    "evaluation_reap_stale_jobs",
    "standings_recompute_schedule",
    "submission_cancel",
    "submission_disqualify",
    "submission_notify",
    "submission_requeue",
    "submission_rerun",
    "submission_set_priority",
]
