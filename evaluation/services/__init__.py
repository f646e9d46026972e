from evaluation.services.transitions import ALLOWED_TRANSITIONS, submission_transition

__all__ = ["ALLOWED_TRANSITIONS", "submission_transition"]
