"""Upload an archive through the portal's tus endpoint, resuming after dropped connections."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from llmec.api import ApiError

CHUNK_SIZE = 8 * 1024 * 1024
MAX_ATTEMPTS = 8


class Progress:
    """A one-line progress bar on a terminal; a line every 10 % elsewhere (logs, CI)."""

    def __init__(self, total: int, stream=None, label: str = "Uploading"):
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.label = label
        self.started = time.monotonic()
        self.first_offset: int | None = None
        self.last_decile = -1
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, offset: int) -> None:
        if self.first_offset is None:
            self.first_offset = offset
        elapsed = max(time.monotonic() - self.started, 1e-6)
        speed = (offset - self.first_offset) / elapsed
        fraction = offset / self.total
        eta = (self.total - offset) / speed if speed > 0 else None
        line = (
            f"{self.label} {fraction * 100:5.1f}% |{'█' * int(fraction * 30):<30}| "
            f"{_size(offset)} / {_size(self.total)}  {_size(speed)}/s  ETA {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line)
            if offset >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            print(line, file=self.stream, flush=True)


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _error_from(error: Exception) -> ApiError:
    status = getattr(error, "status_code", None) or 0
    content = getattr(error, "response_content", None)
    if content:
        fake = requests.Response()
        fake.status_code = status
        fake._content = content if isinstance(content, bytes) else str(content).encode()
        fake.headers["Content-Type"] = "application/json" if fake._content.lstrip().startswith(b"{") else "text/plain"
        return ApiError.from_response(fake)
    return ApiError(status, "upload_failed", f"The upload failed: {error}")


def upload(
    *,
    archive: Path,
    creation_url: str,
    headers: dict[str, str],
    metadata: dict[str, str],
    upload_url: str | None = None,
    progress: Progress | None = None,
    chunk_size: int = CHUNK_SIZE,
    checksum: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Send `archive`; returns the upload's URL. `upload_url` resumes an upload created earlier.

    A dropped connection or a 5xx retries with backoff from the offset the server reports; a 4xx
    (refused: quota, size, deadline, checksum) stops at once with the server's message.
    """
    tus = tus_client.TusClient(creation_url, headers=headers)
    attempt = 0
    uploader = None
    while True:
        try:
            if uploader is None:
                uploader = tus.uploader(
                    str(archive),
                    url=upload_url,
                    chunk_size=chunk_size,
                    metadata=metadata,
                    retries=0,
                    upload_checksum=checksum,
                )
            if not uploader.url:
                uploader.set_url(uploader.create_url())
                uploader.offset = 0
            total = uploader.get_file_size()
            if progress:
                progress.update(uploader.offset)
            while uploader.offset < total:
                uploader.upload_chunk()
                attempt = 0
                if progress:
                    progress.update(uploader.offset)
            return uploader.url
        except (TusCommunicationError, TusUploadFailed) as error:
            status = getattr(error, "status_code", None) or 0
            if 400 <= status < 500 and status not in (408, 409, 423, 429, 460):
                raise _error_from(error) from error
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                raise _error_from(error) from error
            wait = min(2**attempt, 60)
            print(f"\nConnection problem ({error}); resuming in {wait} s…", file=sys.stderr, flush=True)
            sleep(wait)
            if uploader is not None and uploader.url:
                try:
                    uploader.offset = uploader.get_offset()
                except (TusCommunicationError, TusUploadFailed):
                    pass  # Still down: the next attempt asks again.
