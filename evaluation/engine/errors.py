"""Errors the engine reports, each classified once as the participant's fault or the infrastructure's.

The Django side retries infrastructure errors with backoff and fails user errors at once with
their message, which is shown to the team as is.
"""


class EngineError(Exception):
    """Base class. `kind` is "user" (the submission's fault) or "infra" (ours, retried)."""

    kind = "infra"

    def __init__(self, message: str, *, log_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "kind": self.kind, "message": self.message, "log_tail": self.log_tail}


class UserError(EngineError):
    kind = "user"


class InfraError(EngineError):
    kind = "infra"


class ModelTooLarge(UserError):
    """The model needs more GPU memory than its track allows."""


class ModelLoadError(UserError):
    """The weights could not be loaded (bad files, shapes, missing tokenizer)."""


class ServerCrashed(UserError):
    """The model server died while serving this model (often out of memory)."""


class NonFiniteOutput(UserError):
    """The model produced NaN or inf logits."""


class ServerUnhealthy(InfraError):
    """The model server never became healthy."""


class HelmFailed(InfraError):
    """helm-run failed as a whole (not a single run)."""


class HelmTimeout(InfraError):
    """helm-run ran past the suite's time limit."""
