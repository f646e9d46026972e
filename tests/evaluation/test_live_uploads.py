"""Against a real HTTP server (pytest-django's live_server): tuspy, a cut connection, and the quota race."""

import hashlib
import os
import socket
import threading
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection
from tusclient import client as tus_client

from evaluation.models import Submission, Upload
from evaluation.services import QuotaExceeded, submission_create
from tests.factories import SubmissionFactory

CSRF = "a" * 32


def session_headers(client, user) -> dict[str, str]:
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={CSRF}",
        "X-CSRFToken": CSRF,
    }


def cut_patch(url: str, headers: dict[str, str], offset: int, body: bytes, send: int) -> None:
    """Announce the whole body but send only `send` bytes, then drop the connection."""
    parts = urlparse(url)
    lines = [f"PATCH {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Tus-Resumable: 1.0.0",
             "Content-Type: application/offset+octet-stream", f"Upload-Offset: {offset}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:send])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            sock.recv(1024)
        except OSError:
            pass


@pytest.mark.django_db(transaction=True)
def test_tuspy_upload_interrupted_and_resumed(live, client, team, track, base_model, member):
    submission = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    data = os.urandom(3 * 1024 * 1024 + 123)
    path = os.path.join(settings.MEDIA_ROOT, "..", "payload.bin")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    headers = session_headers(client, member)
    endpoint = live.url + "/api/v1/uploads/"
    chunk = 512 * 1024
    tc = tus_client.TusClient(endpoint, headers=headers)
    first = tc.uploader(
        path, chunk_size=chunk, metadata={"submission": str(submission.pk), "filename": "m.bin"}, upload_checksum=True
    )
    first.upload(stop_at=len(data) // 2)
    url = first.url
    assert Upload.objects.get().offset == first.offset >= len(data) // 2

    # The connection drops in the middle of the next chunk: the bytes that arrived are kept.
    offset = first.offset
    cut_patch(url, headers, offset, data[offset : offset + chunk], send=chunk // 3)
    upload = Upload.objects.get()
    assert offset <= upload.offset <= offset + chunk // 3

    # A new client (as after a crash) asks the server where to resume and finishes.
    second = tus_client.TusClient(endpoint, headers=headers).uploader(
        path, url=url, chunk_size=chunk, upload_checksum=True
    )
    assert second.offset == upload.offset
    resent_from = second.offset
    second.upload()
    upload.refresh_from_db()
    assert upload.finished and upload.offset == len(data)
    # Resuming re-sent nothing that the server already had.
    assert resent_from >= offset
    submission.refresh_from_db()
    assert submission.sha256 == hashlib.sha256(data).hexdigest()
    assert open(os.path.join(settings.MEDIA_ROOT, upload.storage_name), "rb").read() == data
    # Random bytes are not a model: validation ran (eagerly) and said so.
    assert submission.status == Submission.Status.FAILED and submission.failure_kind == "user"


@pytest.mark.django_db(transaction=True)
def test_quota_holds_under_parallel_requests(team, teammate, track, base_model, member):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; SQLite serialises writers anyway")
    users = [member, teammate] * 4
    barrier = threading.Barrier(len(users))
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(user):
        try:
            barrier.wait()
            submission_create(
                user=user,
                track=track,
                base_model=base_model,
                datasets="d",
                finetune_gpu_hours=1,
                recipe_url="https://x.org",
            )
            result = "created"
        except QuotaExceeded:
            result = "refused"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert Submission.objects.filter(team=team, track=track).count() == 3
