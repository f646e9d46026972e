"""The tus uploads behind a submission: create, append a request's bytes, terminate, expire."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rehashes import PySha256

from evaluation.models import BaseModel, Submission, Upload
from evaluation.services.submissions import (
    SubmissionsClosed,
    check_submission_window,
    format_in_challenge_tz,
    submission_create,
)
from evaluation.services.transitions import submission_transition
from evaluation.upload_storage import OverlappedAppender, chunk_store
from portal.errors import Conflict, NotFound, PermissionDenied, ServiceError
from portal.models import Membership, Track

logger = logging.getLogger(__name__)
S = Submission.Status
READ_PIECE = 1024 * 1024


class TooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class ChecksumMismatch(ServiceError):
    status_code = 460
    code = "checksum_mismatch"


class Locked(ServiceError):
    status_code = 423
    code = "locked"


class Gone(ServiceError):
    status_code = 410
    code = "gone"


def upload_ttl() -> timedelta:
    return timedelta(hours=getattr(settings, "UPLOAD_EXPIRY_HOURS", 24))


def upload_deadline_grace() -> timedelta:
    return timedelta(hours=getattr(settings, "UPLOAD_DEADLINE_GRACE_HOURS", 3))


def upload_lease() -> timedelta:
    return timedelta(seconds=getattr(settings, "UPLOAD_LEASE_SECONDS", 120))


def upload_get_for_user(*, user, upload_id) -> Upload:
    """The upload if `user` is a member of its team; a 404 otherwise, so other teams learn nothing."""
    upload = (
        Upload.objects.filter(pk=upload_id)
        .filter(Q(submission__team__memberships__user=user))
        .select_related("submission__track__challenge", "submission__team")
        .first()
        if user.is_authenticated
        else None
    )
    if upload is None:
        raise NotFound("No such upload.")
    return upload


def _base_model_by_name(value: str) -> BaseModel:
    base = (
        BaseModel.objects.filter(is_active=True)
        .filter(Q(name=value) | Q(pk=int(value) if value.isdigit() else None))
        .first()
    )
    if base is None:
        raise ServiceError(f"Base model {value!r} is not on the allow-list.", field="base_model")
    return base


def _submission_from_metadata(*, user, metadata: dict[str, str]) -> Submission:
    """Either the submission named by `submission`, or a new one from the declared metadata (CLI, tuspy)."""
    if metadata.get("submission"):
        try:
            submission_id = int(metadata["submission"])
        except ValueError:
            raise ServiceError("The `submission` metadata must be a submission number.")
        submission = (
            Submission.objects.filter(pk=submission_id, team__memberships__user=user)
            .select_related("track__challenge")
            .first()
        )
        if submission is None:
            raise NotFound("No such submission of your team.")
        return submission
    missing = [
        k for k in ("track", "base_model", "datasets", "finetune_gpu_hours", "recipe_url") if not metadata.get(k)
    ]
    if missing:
        raise ServiceError(f"Upload-Metadata needs `submission`, or the fields {', '.join(missing)}.")
    track = Track.objects.filter(slug=metadata["track"], challenge__is_active=True).select_related("challenge").first()
    if track is None:
        raise NotFound(f"No open track {metadata['track']!r}.")
    try:
        hours = float(metadata["finetune_gpu_hours"])
    except ValueError:
        raise ServiceError("finetune_gpu_hours must be a number.", field="finetune_gpu_hours")
    return submission_create(
        user=user,
        track=track,
        base_model=_base_model_by_name(metadata["base_model"]),
        datasets=metadata["datasets"],
        finetune_gpu_hours=hours,
        recipe_url=metadata["recipe_url"],
        notes=metadata.get("notes", ""),
    )


@transaction.atomic
def upload_create(*, user, length: int, metadata: dict[str, str]) -> Upload:
    if not user.is_authenticated:
        raise PermissionDenied("Log in to upload.")
    if not Membership.objects.filter(user=user).exists():
        raise PermissionDenied("Join or create a team before uploading.")
    submission = _submission_from_metadata(user=user, metadata=metadata)
    check_submission_window(submission.track.challenge)
    # Lock the submission so two uploads cannot start for it at once.
    submission = Submission.objects.select_for_update().select_related("track__challenge").get(pk=submission.pk)
    if submission.status != S.UPLOADING:
        raise Conflict(
            f"Submission #{submission.pk} is {submission.get_status_display().lower()}; it takes no more uploads."
        )
    limit = submission.track.max_upload_bytes
    if length > limit:
        raise TooLarge(
            f"The archive is {length:,} bytes; the {submission.track.name} track accepts at most {limit:,} bytes."
        )
    if length <= 0:
        raise ServiceError("An empty upload cannot hold a model.")
    now = timezone.now()
    # A new upload for the same submission replaces an abandoned one.
    for old in submission.uploads.filter(finished_at__isnull=True):
        _delete_bytes(old)
        old.delete()
    upload = Upload(
        owner=user,
        submission=submission,
        length=length,
        filename=(metadata.get("filename") or metadata.get("name") or "")[:300],
        metadata=metadata,
        created_at=now,
        updated_at=now,
        expires_at=now + upload_ttl(),
    )
    upload.storage_name = f"uploads/{submission.pk}/{upload.id}"
    upload.storage_state = chunk_store().begin(upload.storage_name)
    upload.save()
    return upload


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: `<algorithm> <base64 digest>`."""
    if not header:
        return None
    try:
        algorithm, encoded = header.strip().split(" ", 1)
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ServiceError("Upload-Checksum must be `<algorithm> <base64 digest>`.")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ServiceError(
            f"Checksum algorithm {algorithm!r} is not supported; use one of {', '.join(CHECKSUM_ALGORITHMS)}."
        )
    return algorithm, digest


CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5")


def _check_still_open(upload: Upload, now: datetime) -> None:
    challenge = upload.submission.track.challenge
    if now >= challenge.submission_deadline + upload_deadline_grace():
        raise SubmissionsClosed(
            f"The submission deadline was {format_in_challenge_tz(challenge.submission_deadline, challenge)}; "
            "uploads could be finished until "
            f"{format_in_challenge_tz(challenge.submission_deadline + upload_deadline_grace(), challenge)}."
        )


@dataclass
class AppendResult:
    upload: Upload
    received: int
    complete: bool


def upload_append(
    *, user, upload_id, offset: int, stream: BinaryIO, content_length: int | None, checksum: tuple[str, bytes] | None
) -> AppendResult:
    """Store one PATCH body at `offset`, streaming it in fixed pieces, and advance the hash.

    One PATCH at a time holds a short lease on the upload instead of a transaction that lasts as
    long as the transfer. A body whose checksum does not match is dropped and the offset stays put,
    so the client can send it again.
    """
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    now = timezone.now()
    if upload.finished:
        raise Conflict("This upload is already complete.", code="offset_mismatch")
    if upload.expires_at <= now:
        raise Gone("This upload has expired; start a new one.")
    _check_still_open(upload, now)
    if offset != upload.offset:
        raise Conflict(f"Upload-Offset is {offset} but the server has {upload.offset} bytes.", code="offset_mismatch")
    remaining = upload.length - upload.offset
    if content_length is None:
        raise ServiceError("Content-Length is required.", status_code=411)
    if content_length > remaining:
        raise TooLarge(f"This request carries {content_length:,} bytes but only {remaining:,} remain of Upload-Length.")
    # Take the lease: only if nobody holds it and the offset is still what the client expects.
    taken = (
        Upload.objects.filter(pk=upload.pk, offset=offset, finished_at__isnull=True)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .update(locked_until=now + upload_lease())
    )
    if not taken:
        raise Locked("Another request is writing to this upload; retry in a moment.")
    try:
        return _append_locked(upload, stream, content_length, checksum)
    finally:
        Upload.objects.filter(pk=upload.pk).update(locked_until=None)


def _append_locked(upload: Upload, stream: BinaryIO, content_length: int, checksum) -> AppendResult:
    store = chunk_store()
    hasher = PySha256.deserialize(bytes(upload.sha256_state)) if upload.sha256_state else PySha256()
    chunk_hash = hashlib.new(checksum[0]) if checksum else None
    appender = OverlappedAppender(
        store.appender(upload.storage_name, upload.storage_state, upload.offset, upload.length)
    )
    received = 0
    interrupted = False
    last_renewal = timezone.now()
    try:
        while received < content_length:
            try:
                piece = stream.read(min(READ_PIECE, content_length - received))
            except OSError:  # the client went away mid-body (Django's UnreadablePostError is one)
                piece = b""
            if not piece:
                interrupted = True
                break
            appender.write(piece)
            hasher.update(piece)
            if chunk_hash is not None:
                chunk_hash.update(piece)
            received += len(piece)
            if (timezone.now() - last_renewal).total_seconds() > upload_lease().total_seconds() / 3:
                last_renewal = timezone.now()
                Upload.objects.filter(pk=upload.pk).update(locked_until=last_renewal + upload_lease())
    except BaseException:
        appender.rollback()
        raise
    if chunk_hash is not None and (interrupted or chunk_hash.digest() != checksum[1]):
        appender.rollback()
        if interrupted:
            raise ServiceError("The request body ended early; nothing was stored. Resume from the same offset.")
        raise ChecksumMismatch("The chunk's checksum does not match its bytes; nothing was stored. Send it again.")
    if received == 0:
        appender.rollback()
        return AppendResult(upload, 0, False)
    # Bytes of an interrupted body without a checksum are kept: tus lets the client resume after them.
    # Terminated or expired while this body streamed in: its row and bytes are gone, so is this request's work.
    if not Upload.objects.filter(pk=upload.pk, offset=upload.offset).exists():
        appender.rollback()
        raise Gone("This upload was cancelled while the chunk was arriving.")
    old_offset = upload.offset
    upload.storage_state = appender.commit()
    upload.offset += received
    upload.sha256_state = hasher.serialize()
    upload.updated_at = timezone.now()
    complete = upload.offset == upload.length
    with transaction.atomic():
        values = {
            "offset": upload.offset,
            "sha256_state": upload.sha256_state,
            "storage_state": upload.storage_state,
            "updated_at": upload.updated_at,
        }
        if complete:
            upload.sha256 = values["sha256"] = hasher.finalize()
            upload.finished_at = values["finished_at"] = upload.updated_at
        if not Upload.objects.filter(pk=upload.pk, offset=old_offset).update(**values):
            raise Gone("This upload was cancelled while the chunk was arriving.")
        if complete:
            _upload_complete(upload)
    if interrupted:
        logger.info("upload %s: body interrupted after %s bytes; kept them", upload.pk, received)
    return AppendResult(upload, received, complete)


def _upload_complete(upload: Upload) -> None:
    """The last byte arrived: the submission goes to validation, and the task is sent after commit."""
    from evaluation.tasks import submission_validate_task

    submission_transition(
        submission_id=upload.submission_id,
        to=S.VALIDATING,
        reason=f"Upload complete: {upload.length:,} bytes, SHA-256 {upload.sha256}.",
        actor=upload.owner,
        update={
            "size_bytes": upload.length,
            "sha256": upload.sha256,
            "archive_name": upload.filename or "archive",
            "archive_path": upload.storage_name,
        },
    )
    submission_id = upload.submission_id
    transaction.on_commit(lambda: submission_validate_task.delay(submission_id))


def _delete_bytes(upload: Upload) -> None:
    try:
        chunk_store().delete(upload.storage_name, upload.storage_state)
    except Exception:  # a missing file must not keep the row (or the quota slot) alive
        logger.exception("could not delete the bytes of upload %s", upload.pk)


@transaction.atomic
def upload_terminate(*, user, upload_id) -> None:
    """tus termination: drop an unfinished upload's bytes and cancel its submission (the quota slot is freed)."""
    upload = upload_get_for_user(user=user, upload_id=upload_id)
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    if upload.finished:
        raise Conflict("This upload is complete and being validated; it can no longer be cancelled.")
    _delete_bytes(upload)
    submission_id = upload.submission_id
    upload.delete()
    submission_transition(
        submission_id=submission_id, to=S.CANCELLED, reason="Upload cancelled by the team.", actor=user
    )


def uploads_expire(*, now: datetime | None = None, batch: int = 100) -> int:
    """Delete the bytes of unfinished uploads past their expiry and cancel their submissions."""
    now = now or timezone.now()
    count = 0
    for upload in Upload.objects.expired(now).filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))[:batch]:
        with transaction.atomic():
            locked = (
                Upload.objects.select_for_update(skip_locked=True)
                .filter(pk=upload.pk, finished_at__isnull=True)
                .first()
            )
            if locked is None:
                continue
            _delete_bytes(locked)
            submission_id = locked.submission_id
            locked.delete()
            submission = Submission.objects.get(pk=submission_id)
            if submission.status == S.UPLOADING:
                submission_transition(
                    submission_id=submission_id,
                    to=S.CANCELLED,
                    reason="The upload was not finished in time; its bytes were deleted. Start a new submission.",
                )
            count += 1
    return count
