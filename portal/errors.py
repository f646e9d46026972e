"""The one domain error type. Views and the API map it to a 4xx answer with its message."""


class ServiceError(Exception):
    """A request the rules refuse. `message` is shown to the user as is."""

    status_code = 400
    code = "invalid"

    def __init__(
        self, message: str, *, code: str | None = None, status_code: int | None = None, field: str | None = None
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code
        self.field = field


class PermissionDenied(ServiceError):
    status_code = 403
    code = "permission_denied"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"
