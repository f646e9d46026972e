"""The one error format of the API: `{"error": {"code", "message", "fields"}}`.

DRF's exceptions, the domain's ServiceError, Django's ValidationError, Http404 and PermissionDenied all
pass through `api_exception_handler`; `handler404`/`handler500` answer the same shape for /api/ paths
that never reach a DRF view (unknown URLs, crashes).
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import ServiceError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"

_DEFAULT_MESSAGES = {
    "not_authenticated": "Log in or send an API token: 'Authorization: Bearer <token>'.",
}


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as `{"field.sub": ["message", …]}`."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for sub, messages in _flatten(value, name).items():
                out.setdefault(sub, []).extend(messages)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                for sub, messages in _flatten(value, f"{prefix}.{index}" if prefix else str(index)).items():
                    out.setdefault(sub, []).extend(messages)
            else:
                out.setdefault(prefix or "non_field_errors", []).append(str(value))
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return out


def _first_code(codes) -> str:
    if isinstance(codes, dict):
        codes = next(iter(codes.values()), "invalid")
    if isinstance(codes, list):
        codes = codes[0] if codes else "invalid"
    if isinstance(codes, dict | list):
        return _first_code(codes)
    return str(codes)


def _from_validation_error(exc: exceptions.ValidationError) -> dict:
    fields = _flatten(exc.detail)
    general = fields.pop("non_field_errors", [])
    if general:
        message = " ".join(general)
    elif len(fields) == 1:
        name, messages = next(iter(fields.items()))
        message = f"{name}: {' '.join(messages)}"
    else:
        message = "Some fields are invalid: " + ", ".join(sorted(fields)) + "."
    return error_body("invalid", message, fields)


def _to_drf(exc: Exception) -> Exception:
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            return exceptions.ValidationError(exc.message_dict)
        return exceptions.ValidationError(exc.messages)
    if isinstance(exc, Http404):
        return exceptions.NotFound("Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    return exc


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ServiceError):
        fields = {exc.field: [exc.message]} if exc.field else {}
        response = Response(error_body(exc.code, exc.message, fields), status=exc.status_code)
        resets_at = getattr(exc, "resets_at", None)  # a quota: tell clients when to come back
        if resets_at is not None:
            response["Retry-After"] = str(max(1, int((resets_at - timezone.now()).total_seconds())))
        return response
    exc = _to_drf(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        # Not an API error: Django logs it and handler500 answers in the same format.
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = _from_validation_error(exc)
        return response
    code = _first_code(exc.get_codes()) if isinstance(exc, exceptions.APIException) else "error"
    if isinstance(exc, exceptions.Throttled):
        code = "throttled"
        message = (
            f"Too many requests; try again in {exc.wait:.0f} seconds."
            if exc.wait is not None
            else "Too many requests; try again later."
        )
    else:
        message = _DEFAULT_MESSAGES.get(code) if code == "not_authenticated" else None
        message = message or str(getattr(exc, "detail", exc))
    response.data = error_body(code, message)
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("bad_request", "The request could not be understood."), status=400)
    return defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("permission_denied", "You may not do this."), status=403)
    return defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("not_found", "No such API endpoint or object."), status=status.HTTP_404_NOT_FOUND
        )
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("server_error", "Something went wrong on our side; it has been logged. Please retry later."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    return defaults.server_error(request)
