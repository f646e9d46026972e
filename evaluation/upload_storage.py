"""Appending an upload's bytes to the default storage, a piece at a time.

Django's Storage API has no append, so each backend gets a small adapter:
- a local folder (FileSystemStorage): write in place at the offset; fsync before the offset is recorded;
- S3-compatible storage (django-storages S3Storage): one multipart upload per tus upload. Parts must
  be at least 5 MiB, but tus chunks can be smaller, so a request's bytes are spooled to a temporary
  file (disk, not memory), full parts are sent, and the remainder is kept as a `<key>.tail` object that
  the next request prepends.
Both keep memory constant: nothing holds more than one piece (or one S3 part) at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.core.files.storage import FileSystemStorage, Storage, storages

S3_PART_BYTES = 8 * 1024 * 1024
COPY_PIECE = 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024


class Appender:
    """Receives one request's bytes; `commit` keeps them, `rollback` forgets them."""

    def write(self, piece: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> dict:
        """Make the bytes durable; return the new storage state."""
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError


class OverlappedAppender(Appender):
    """Writes on a helper thread while the request thread reads the next piece from the socket.

    `write()` releases the GIL, so the disk write of one piece overlaps the socket read and the hash
    of the next. At most `depth` pieces wait, so memory stays bounded; a write error surfaces on the
    next `write` or on `commit`.
    """

    def __init__(self, inner: Appender, depth: int = 4):
        self.inner, self.depth = inner, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-write")
        self.pending: deque = deque()

    def write(self, piece: bytes) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self.inner.write, piece))

    def _drain(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def commit(self) -> dict:
        self._drain()
        return self.inner.commit()

    def rollback(self) -> None:
        with contextlib.suppress(Exception):
            self._drain()
        self.inner.rollback()


class ChunkStore:
    def begin(self, name: str) -> dict:
        raise NotImplementedError

    def appender(self, name: str, state: dict, offset: int, length: int) -> Appender:
        raise NotImplementedError

    def delete(self, name: str, state: dict) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def local_copy(self, name: str, workdir: Path) -> Iterator[Path]:
        """A local path to the finished bytes (the file itself, or a temporary download)."""
        raise NotImplementedError


class _LocalAppender(Appender):
    def __init__(self, path: str, offset: int):
        self.offset = offset
        self.fh = open(path, "r+b")
        # Bytes past the recorded offset come from an interrupted request that was never recorded.
        self.fh.truncate(offset)
        self.fh.seek(offset)
        self.unsynced = 0

    def write(self, piece: bytes) -> None:
        self.fh.write(piece)
        self.unsynced += len(piece)
        if self.unsynced >= WRITEBACK_STEP and hasattr(os, "posix_fadvise"):  # not on macOS
            # Start the disk write of what is already written without waiting for it, so the fsync
            # in commit() finds little left to do (otherwise the whole request's bytes wait for it).
            self.fh.flush()
            end = self.fh.tell()
            os.posix_fadvise(self.fh.fileno(), end - self.unsynced, self.unsynced, os.POSIX_FADV_DONTNEED)
            self.unsynced = 0

    def commit(self) -> dict:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return {}

    def rollback(self) -> None:
        self.fh.truncate(self.offset)
        self.fh.close()


class LocalChunkStore(ChunkStore):
    def __init__(self, storage: FileSystemStorage):
        self.storage = storage

    def begin(self, name: str) -> dict:
        path = Path(self.storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb"):
            pass
        return {}

    def appender(self, name: str, state: dict, offset: int, length: int) -> Appender:
        return _LocalAppender(self.storage.path(name), offset)

    def delete(self, name: str, state: dict) -> None:
        self.storage.delete(name)

    @contextlib.contextmanager
    def local_copy(self, name: str, workdir: Path) -> Iterator[Path]:
        yield Path(self.storage.path(name))


class _S3Appender(Appender):
    def __init__(self, store: S3ChunkStore, name: str, state: dict, offset: int, length: int):
        self.store, self.name, self.state, self.offset, self.length = store, name, dict(state), offset, length
        self.spool = tempfile.TemporaryFile(dir=store.spool_dir)
        self.received = 0
        if self.state.get("tail_bytes"):
            body = store.client.get_object(Bucket=store.bucket, Key=store.key(name) + ".tail")["Body"]
            while piece := body.read(COPY_PIECE):
                self.spool.write(piece)

    def write(self, piece: bytes) -> None:
        self.spool.write(piece)
        self.received += len(piece)

    def commit(self) -> dict:
        client, bucket, key = self.store.client, self.store.bucket, self.store.key(self.name)
        final = self.offset + self.received >= self.length
        size = self.spool.tell()
        self.spool.seek(0)
        parts = list(self.state.get("parts", []))
        sent = 0
        while size - sent >= S3_PART_BYTES or (final and sent < size):
            body = self.spool.read(S3_PART_BYTES)
            number = len(parts) + 1
            etag = client.upload_part(
                Bucket=bucket, Key=key, UploadId=self.state["upload_id"], PartNumber=number, Body=body
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            sent += len(body)
        remainder = self.spool.read()
        self.spool.close()
        if final:
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=self.state["upload_id"], MultipartUpload={"Parts": parts}
            )
            if self.state.get("tail_bytes"):
                client.delete_object(Bucket=bucket, Key=key + ".tail")
            return {"upload_id": self.state["upload_id"], "parts": parts, "tail_bytes": 0, "complete": True}
        client.put_object(Bucket=bucket, Key=key + ".tail", Body=remainder)
        return {"upload_id": self.state["upload_id"], "parts": parts, "tail_bytes": len(remainder)}

    def rollback(self) -> None:
        self.spool.close()


class S3ChunkStore(ChunkStore):
    def __init__(self, storage, spool_dir: str | None = None):
        self.storage = storage
        self.client = storage.connection.meta.client
        self.bucket = storage.bucket_name
        self.spool_dir = spool_dir

    def key(self, name: str) -> str:
        return self.storage._normalize_name(name)

    def begin(self, name: str) -> dict:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key(name))["UploadId"]
        return {"upload_id": upload_id, "parts": [], "tail_bytes": 0}

    def appender(self, name: str, state: dict, offset: int, length: int) -> Appender:
        return _S3Appender(self, name, state, offset, length)

    def delete(self, name: str, state: dict) -> None:
        key = self.key(name)
        if state.get("upload_id") and not state.get("complete"):
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=state["upload_id"])
        for k in (key + ".tail", key):
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=k)

    @contextlib.contextmanager
    def local_copy(self, name: str, workdir: Path) -> Iterator[Path]:
        workdir.mkdir(parents=True, exist_ok=True)
        target = workdir / "archive.download"
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        with open(target, "wb") as out:
            shutil.copyfileobj(body, out, COPY_PIECE)
        try:
            yield target
        finally:
            target.unlink(missing_ok=True)


def chunk_store(storage: Storage | None = None) -> ChunkStore:
    inner = storage or storages["default"]
    if isinstance(inner, FileSystemStorage):
        return LocalChunkStore(inner)
    if type(inner).__name__ in {"S3Storage", "S3Boto3Storage"}:
        return S3ChunkStore(inner)
    raise NotImplementedError(f"Resumable uploads do not support {type(inner).__name__} storage.")
