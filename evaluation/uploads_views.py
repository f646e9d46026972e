"""The tus 1.0 server (core, creation, termination, checksum, expiration) as plain Django views.

Bodies are read from the request stream in fixed pieces (`request.read(n)`), never through
`request.body`, so DATA_UPLOAD_MAX_MEMORY_SIZE never applies and memory stays flat whatever the
chunk size. Authentication goes through DRF's configured authenticators, so the browser session
(with its CSRF check) and whatever token scheme the API adds both work here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import UTC
from email.utils import format_datetime

from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings

from evaluation.models import Upload
from evaluation.services import uploads as upload_services
from evaluation.services.submissions import QuotaExceeded
from portal.api.errors import error_body
from portal.errors import PermissionDenied, ServiceError
from portal.models import Track

logger = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,checksum,expiration"


def _response(status: int, **headers: str) -> HttpResponse:
    response = HttpResponse(status=status)
    response["Tus-Resumable"] = TUS_VERSION
    response["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _fail(status: int, code: str, message: str, *, field: str | None = None, **headers: str) -> HttpResponse:
    """An error in the API's one format. tus clients read only the status and headers; people and the CLI
    read the message."""
    response = _response(status, **headers)
    response["Content-Type"] = "application/json"
    response.content = json.dumps(
        error_body(code, message, {field: [message]} if field else None), ensure_ascii=False
    ).encode()
    return response


def _error(exc: ServiceError) -> HttpResponse:
    headers = {}
    if isinstance(exc, QuotaExceeded):
        headers["Retry-After"] = str(max(1, int((exc.resets_at - timezone.now()).total_seconds())))
        headers["X-Quota-Resets-At"] = exc.resets_at.isoformat()
    return _fail(exc.status_code, exc.code, exc.message, field=exc.field, **headers)


def _authenticate(request: HttpRequest):
    """The user, through DRF's authenticators (session with CSRF, tokens); AnonymousUser if none."""
    drf_request = Request(request)
    for authenticator in api_settings.DEFAULT_AUTHENTICATION_CLASSES:
        try:
            result = authenticator().authenticate(drf_request)
        except drf_exceptions.PermissionDenied as exc:  # failed CSRF check
            raise PermissionDenied(str(exc.detail))
        except drf_exceptions.AuthenticationFailed as exc:
            raise ServiceError(str(exc.detail), status_code=401, code="authentication_failed")
        if result is not None:
            return result[0]
    return request.user


def _require_user(request: HttpRequest):
    user = _authenticate(request)
    if not user.is_authenticated:
        raise ServiceError("Log in or send an API token to upload.", status_code=401, code="not_authenticated")
    return user


def decode_metadata(header: str) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            metadata[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except (binascii.Error, UnicodeDecodeError):
            raise ServiceError(f"Upload-Metadata value of {key!r} is not base64 UTF-8.", field="Upload-Metadata")
    return metadata


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in metadata.items())


def _max_size() -> int:
    return Track.objects.filter(challenge__is_active=True).aggregate(m=Max("max_upload_bytes"))["m"] or 0


def _check_version(request: HttpRequest) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise ServiceError(f"Send Tus-Resumable: {TUS_VERSION}.", status_code=412, code="tus_version")


def _expires(upload: Upload) -> str:
    return format_datetime(upload.expires_at.astimezone(UTC), usegmt=True)


@csrf_exempt  # enforced by the session authenticator where a session is used
def uploads_collection(request: HttpRequest) -> HttpResponse:
    try:
        if request.method == "OPTIONS":
            return _response(
                204,
                Tus_Version=TUS_VERSION,
                Tus_Extension=EXTENSIONS,
                Tus_Max_Size=str(_max_size()),
                Tus_Checksum_Algorithm=",".join(upload_services.CHECKSUM_ALGORITHMS),
            )
        if request.method != "POST":
            return _fail(405, "method_not_allowed", "Use POST to create an upload.", Allow="OPTIONS, POST")
        _check_version(request)
        user = _require_user(request)
        if "Upload-Defer-Length" in request.headers:
            return _fail(
                400, "invalid", "Upload-Defer-Length is not supported; send Upload-Length.", field="Upload-Defer-Length"
            )
        try:
            length = int(request.headers.get("Upload-Length", ""))
        except ValueError:
            return _fail(400, "invalid", "Send Upload-Length: the size of the archive in bytes.", field="Upload-Length")
        metadata = decode_metadata(request.headers.get("Upload-Metadata", ""))
        upload = upload_services.upload_create(user=user, length=length, metadata=metadata)
        location = request.build_absolute_uri(reverse("tus-upload", args=[upload.pk]))
        return _response(
            201,
            Location=location,
            Upload_Expires=_expires(upload),
            X_Submission_Id=str(upload.submission_id),
        )
    except ServiceError as exc:
        return _error(exc)


@csrf_exempt  # enforced by the session authenticator where a session is used
def upload_resource(request: HttpRequest, upload_id) -> HttpResponse:
    try:
        if request.method == "OPTIONS":
            return _response(204, Tus_Version=TUS_VERSION, Tus_Extension=EXTENSIONS)
        _check_version(request)
        user = _require_user(request)
        if request.method == "HEAD":
            upload = upload_services.upload_get_for_user(user=user, upload_id=upload_id)
            if not upload.finished and upload.expires_at <= timezone.now():
                return _fail(410, "gone", "This upload has expired; start a new one.")
            headers = {"Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length)}
            if upload.metadata:
                headers["Upload-Metadata"] = encode_metadata(upload.metadata)
            if not upload.finished:
                headers["Upload-Expires"] = _expires(upload)
            response = _response(200, **{k.replace("-", "_"): v for k, v in headers.items()})
            return response
        if request.method == "PATCH":
            if request.content_type != "application/offset+octet-stream":
                return _fail(415, "unsupported_media_type", "Content-Type must be application/offset+octet-stream.")
            try:
                offset = int(request.headers.get("Upload-Offset", ""))
                content_length = (
                    int(request.headers["Content-Length"]) if request.headers.get("Content-Length") else None
                )
            except ValueError:
                return _fail(
                    400, "invalid", "Upload-Offset and Content-Length must be integers.", field="Upload-Offset"
                )
            checksum = upload_services.parse_checksum(request.headers.get("Upload-Checksum"))
            result = upload_services.upload_append(
                user=user,
                upload_id=upload_id,
                offset=offset,
                stream=request,
                content_length=content_length,
                checksum=checksum,
            )
            headers = {"Upload_Offset": str(result.upload.offset)}
            if not result.complete:
                headers["Upload_Expires"] = _expires(result.upload)
            return _response(204, **headers)
        if request.method == "DELETE":
            upload_services.upload_terminate(user=user, upload_id=upload_id)
            return _response(204)
        return _fail(405, "method_not_allowed", "Use HEAD, PATCH or DELETE.", Allow="OPTIONS, HEAD, PATCH, DELETE")
    except ServiceError as exc:
        return _error(exc)
