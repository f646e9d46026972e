"""The local-folder adapter: bytes written on a helper thread land in order, errors are not lost."""

import hashlib
import os

import pytest

from evaluation import upload_storage
from evaluation.upload_storage import Appender, LocalChunkStore, OverlappedAppender

MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path):
    from django.core.files.storage import FileSystemStorage

    return LocalChunkStore(FileSystemStorage(location=tmp_path))


def test_pieces_land_in_order_across_requests_and_writeback_steps(store, tmp_path, monkeypatch):
    monkeypatch.setattr(upload_storage, "WRITEBACK_STEP", 3 * MIB)  # several early writebacks per request
    pieces = [os.urandom(MIB + n) for n in range(9)]
    store.begin("u/archive")
    offset = 0
    for request in (pieces[:4], pieces[4:]):
        appender = OverlappedAppender(store.appender("u/archive", {}, offset, 0), depth=2)
        for piece in request:
            appender.write(piece)
            offset += len(piece)
        appender.commit()
    data = (tmp_path / "u/archive").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(b"".join(pieces)).digest()


def test_rollback_waits_for_queued_writes_then_forgets_them(store, tmp_path):
    store.begin("u/archive")
    first = OverlappedAppender(store.appender("u/archive", {}, 0, 0))
    first.write(b"kept" * MIB)
    first.commit()
    second = OverlappedAppender(store.appender("u/archive", {}, 4 * MIB, 0))
    for _ in range(6):
        second.write(os.urandom(MIB))
    second.rollback()
    assert (tmp_path / "u/archive").read_bytes() == b"kept" * MIB


class FailingAppender(Appender):
    def __init__(self):
        self.writes, self.rolled_back = 0, False

    def write(self, piece):
        self.writes += 1
        if self.writes == 2:
            raise OSError(28, "No space left on device")

    def commit(self):
        raise AssertionError("commit must not be reached after a failed write")

    def rollback(self):
        self.rolled_back = True


def test_a_failed_background_write_surfaces_and_is_never_committed():
    inner = FailingAppender()
    appender = OverlappedAppender(inner, depth=1)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(5):
            appender.write(b"x" * 1024)
        appender.commit()
    appender.rollback()
    assert inner.rolled_back
    assert inner.writes == 2  # nothing was written after the failure
