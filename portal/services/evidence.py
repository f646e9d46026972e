"""Checks on uploaded student evidence: the content decides the type, not the file name."""

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from portal.errors import ServiceError

# Magic numbers of the formats organizers can open safely in a browser.
_SIGNATURES: list[tuple[bytes, str, str]] = [
    (b"%PDF-", "pdf", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
]


def evidence_sniff(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) of the file whose first bytes are `head`, or None."""
    for magic, ext, content_type in _SIGNATURES:
        if head.startswith(magic):
            return ext, content_type
    return None


def evidence_content_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg"}.get(ext, "application/octet-stream")


def evidence_check(upload: UploadedFile) -> str:
    """Refuse an empty, oversized or wrong-type file; return the extension to store it under."""
    limit = settings.STUDENT_EVIDENCE_MAX_BYTES
    if upload.size is None or upload.size == 0:
        raise ServiceError("The evidence file is empty.", field="student_evidence", code="evidence_empty")
    if upload.size > limit:
        raise ServiceError(
            f"The evidence file is {upload.size / 1024 / 1024:.1f} MB; the limit is {limit / 1024 / 1024:.1f} MB.",
            field="student_evidence",
            code="evidence_too_large",
        )
    upload.seek(0)
    head = upload.read(16)
    upload.seek(0)
    sniffed = evidence_sniff(head)
    if sniffed is None:
        raise ServiceError(
            "The evidence must be a PDF, PNG or JPEG file (its content is not one of these, whatever its name).",
            field="student_evidence",
            code="evidence_wrong_type",
        )
    return sniffed[0]
