"""The tus 1.0 endpoint through Django's test client: protocol, limits, permissions, dates, quota."""

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from evaluation.models import Submission, Upload
from evaluation.services import submission_create
from evaluation.services.uploads import uploads_expire
from tests.factories import SubmissionFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/uploads/"
TUS = {"Tus-Resumable": "1.0.0"}


def meta(**kv) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in kv.items())


@pytest.fixture
def submission(team, track, base_model, member):
    return SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)


@pytest.fixture
def client_for():
    def make(user, **kw):
        c = Client(**kw)
        c.force_login(user)
        return c

    return make


def create(client, submission, length, **extra):
    return client.post(
        URL,
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": meta(submission=submission.pk, filename="m.tar.gz", **extra),
        },
    )


def patch(client, location, offset, data, **headers):
    return client.generic(
        "PATCH", location, data=data, content_type="application/offset+octet-stream",
        headers={**TUS, "Upload-Offset": str(offset), **headers},
    )  # fmt: skip


def checksum(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_options_advertises_versions_extensions_and_max_size(client, track):
    r = client.options(URL)
    assert r.status_code == 204
    assert r["Tus-Version"] == "1.0.0" and r["Tus-Resumable"] == "1.0.0"
    assert set(r["Tus-Extension"].split(",")) >= {"creation", "termination", "checksum"}
    assert int(r["Tus-Max-Size"]) == track.max_upload_bytes
    assert "sha256" in r["Tus-Checksum-Algorithm"]


def test_create_patch_head_complete(client_for, member, submission):
    c = client_for(member)
    data = os.urandom(300_000)
    r = create(c, submission, len(data))
    assert r.status_code == 201, r.content
    location = r["Location"]
    assert r["Upload-Expires"] and r["X-Submission-Id"] == str(submission.pk)
    head = c.head(location, headers=TUS)
    assert (head.status_code, head["Upload-Offset"], head["Upload-Length"]) == (200, "0", str(len(data)))
    assert head["Cache-Control"] == "no-store"
    r = patch(c, location, 0, data[:100_000], **{"Upload-Checksum": checksum(data[:100_000])})
    assert (r.status_code, r["Upload-Offset"]) == (204, "100000")
    assert c.head(location, headers=TUS)["Upload-Offset"] == "100000"
    r = patch(c, location, 100_000, data[100_000:])
    assert (r.status_code, r["Upload-Offset"]) == (204, str(len(data)))
    submission.refresh_from_db()
    assert submission.status == Submission.Status.VALIDATING
    assert submission.sha256 == hashlib.sha256(data).hexdigest() and submission.size_bytes == len(data)
    stored = Path(settings.MEDIA_ROOT) / submission.archive_path
    assert stored.read_bytes() == data


def test_wrong_offset_is_409(client_for, member, submission):
    c = client_for(member)
    location = create(c, submission, 1000)["Location"]
    assert patch(c, location, 0, b"a" * 100).status_code == 204
    r = patch(c, location, 50, b"b" * 100)
    assert r.status_code == 409 and b"server has 100 bytes" in r.content


def test_bad_checksum_is_460_and_the_upload_stays_resumable(client_for, member, submission):
    c = client_for(member)
    data = os.urandom(5000)
    location = create(c, submission, len(data))["Location"]
    assert patch(c, location, 0, data[:2000]).status_code == 204
    r = patch(c, location, 2000, data[2000:], **{"Upload-Checksum": checksum(b"something else")})
    assert r.status_code == 460 and b"checksum" in r.content
    assert c.head(location, headers=TUS)["Upload-Offset"] == "2000"
    r = patch(c, location, 2000, data[2000:], **{"Upload-Checksum": checksum(data[2000:], "sha1")})
    assert r.status_code == 204
    submission.refresh_from_db()
    assert submission.sha256 == hashlib.sha256(data).hexdigest()


def test_unsupported_checksum_algorithm_is_400(client_for, member, submission):
    c = client_for(member)
    location = create(c, submission, 10)["Location"]
    assert patch(c, location, 0, b"x" * 10, **{"Upload-Checksum": "crc32 AAAA"}).status_code == 400


def test_over_the_track_limit_is_413(client_for, member, submission, track):
    c = client_for(member)
    r = create(c, submission, track.max_upload_bytes + 1)
    assert r.status_code == 413 and b"at most" in r.content
    assert not Upload.objects.exists()
    location = create(c, submission, 100)["Location"]
    assert patch(c, location, 0, b"x" * 101).status_code == 413
    assert c.head(location, headers=TUS)["Upload-Offset"] == "0"


def test_missing_tus_version_is_412(client_for, member, submission):
    r = client_for(member).post(URL, headers={"Upload-Length": "10", "Upload-Metadata": meta(submission=submission.pk)})
    assert r.status_code == 412


def test_anonymous_is_401(client, submission):
    assert create(client, submission, 10).status_code == 401


def test_non_members_get_404_and_users_without_team_403(client_for, member, outsider, loner, submission):
    location = create(client_for(member), submission, 100)["Location"]
    other = client_for(outsider)
    assert create(other, submission, 100).status_code == 404
    assert other.head(location, headers=TUS).status_code == 404
    assert patch(other, location, 0, b"x").status_code == 404
    assert other.delete(location, headers=TUS).status_code == 404
    assert create(client_for(loner), submission, 100).status_code == 403


def test_session_without_csrf_token_is_refused(client_for, member, submission):
    c = client_for(member, enforce_csrf_checks=True)
    r = create(c, submission, 100)
    assert r.status_code == 403 and b"CSRF" in r.content


def test_after_the_deadline_is_403_naming_it(client_for, member, submission, challenge):
    c = client_for(member)
    location = create(c, submission, 100)["Location"]
    challenge.submission_deadline = timezone.now() - timedelta(hours=1)
    challenge.save()
    r = create(c, submission, 100)
    assert r.status_code == 403 and "deadline was" in r.content.decode() and "Anywhere on Earth" in r.content.decode()
    # An upload started in time may finish within the grace period…
    assert patch(c, location, 0, b"x" * 10).status_code == 204
    # …but not after it.
    challenge.submission_deadline = timezone.now() - timedelta(hours=settings.UPLOAD_DEADLINE_GRACE_HOURS + 1)
    challenge.save()
    r = patch(c, location, 10, b"x" * 10)
    assert r.status_code == 403 and "deadline was" in r.content.decode()


def test_quota_exceeded_on_creation_is_429_with_reset_time(client_for, member, track, base_model):
    c = client_for(member)
    fields = dict(
        track=track.slug,
        base_model=base_model.name,
        datasets="dolly",
        finetune_gpu_hours="3",
        recipe_url="https://x.org/r",
    )
    for _ in range(3):
        r = c.post(URL, headers={**TUS, "Upload-Length": "100", "Upload-Metadata": meta(**fields)})
        assert r.status_code == 201
    r = c.post(URL, headers={**TUS, "Upload-Length": "100", "Upload-Metadata": meta(**fields)})
    assert r.status_code == 429
    assert "resets at" in r.content.decode() and int(r["Retry-After"]) > 0 and r["X-Quota-Resets-At"]
    assert Submission.objects.count() == 3


def test_termination_deletes_the_bytes_and_frees_the_quota_slot(client_for, member, submission):
    c = client_for(member)
    location = create(c, submission, 1000)["Location"]
    patch(c, location, 0, b"x" * 500)
    upload = Upload.objects.get()
    path = Path(settings.MEDIA_ROOT) / upload.storage_name
    assert path.stat().st_size == 500
    assert c.delete(location, headers=TUS).status_code == 204
    assert not path.exists() and not Upload.objects.exists()
    submission.refresh_from_db()
    assert submission.status == Submission.Status.CANCELLED and not submission.counts_toward_quota
    assert c.head(location, headers=TUS).status_code == 404


def test_a_second_upload_replaces_an_abandoned_one(client_for, member, submission):
    c = client_for(member)
    first = create(c, submission, 1000)["Location"]
    patch(c, first, 0, b"x" * 10)
    second = create(c, submission, 20)["Location"]
    assert c.head(first, headers=TUS).status_code == 404
    assert patch(c, second, 0, b"y" * 20).status_code == 204


def test_expired_uploads_lose_their_bytes_and_their_submission(client_for, member, submission):
    c = client_for(member)
    location = create(c, submission, 1000)["Location"]
    patch(c, location, 0, b"x" * 10)
    upload = Upload.objects.get()
    path = Path(settings.MEDIA_ROOT) / upload.storage_name
    assert uploads_expire() == 0 and path.exists()
    assert uploads_expire(now=timezone.now() + timedelta(hours=settings.UPLOAD_EXPIRY_HOURS + 1)) == 1
    assert not path.exists() and not Upload.objects.exists()
    submission.refresh_from_db()
    assert submission.status == Submission.Status.CANCELLED and "not finished in time" in submission.status_reason


def test_expire_task_is_scheduled_on_the_cpu_queue():
    entry = settings.CELERY_BEAT_SCHEDULE["evaluation-uploads-expire"]
    assert entry["task"] == "evaluation.uploads_expire" and entry["options"]["queue"] == "cpu"


def test_completed_upload_is_validated_and_queued(
    client_for, member, submission, model_dirs, tmp_path, django_capture_on_commit_callbacks, gpu_messages
):
    from tests.evaluation.archive_tools import tar_folder

    archive = tar_folder(model_dirs["full"], tmp_path / "m.tar.gz").read_bytes()
    c = client_for(member)
    location = create(c, submission, len(archive))["Location"]
    with django_capture_on_commit_callbacks(execute=True):
        assert patch(c, location, 0, archive).status_code == 204
    submission.refresh_from_db()
    assert submission.status == Submission.Status.QUEUED, submission.status_reason
    assert Path(submission.model_dir, "model.safetensors").is_file()
    assert Path(submission.model_dir).is_relative_to(Path(settings.MEDIA_ROOT) / "submissions" / str(submission.pk))
    assert [e.to_status for e in submission.events.all()] == ["validating", "queued"]
    # One "slot on this track" message went to the track's GPU queue.
    assert [m["queue"] for m in gpu_messages] == [submission.track.queue_name]


def test_bad_upload_fails_as_the_teams_error(client_for, member, submission, django_capture_on_commit_callbacks):
    c = client_for(member)
    data = os.urandom(1000)
    location = create(c, submission, len(data))["Location"]
    with django_capture_on_commit_callbacks(execute=True):
        patch(c, location, 0, data)
    submission.refresh_from_db()
    assert submission.status == Submission.Status.FAILED and submission.failure_kind == "user"
    assert "not a zip, tar or tar.gz" in submission.status_reason


def test_creation_after_submission_create_uses_no_extra_quota(member, track, base_model, client_for):
    s = submission_create(
        user=member, track=track, base_model=base_model, datasets="d", finetune_gpu_hours=1, recipe_url="https://x.org"
    )
    assert create(client_for(member), s, 10).status_code == 201
    assert Submission.objects.count() == 1


def test_errors_use_the_apis_one_format_with_tus_headers(client, client_for, member, submission, track):
    """tus clients read only the status and headers; people, the page and the CLI read `error.message`."""

    def error(r, status: int, code: str) -> dict:
        assert r.status_code == status and r["Tus-Resumable"] == "1.0.0" and r["Cache-Control"] == "no-store"
        assert r["Content-Type"] == "application/json"
        if r.request["REQUEST_METHOD"] == "HEAD":  # answers to HEAD carry no body
            return {"code": code}
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
        assert body["error"]["code"] == code and body["error"]["message"]
        return body["error"]

    assert (
        "Log in" in error(client.post(URL, headers={**TUS, "Upload-Length": "10"}), 401, "not_authenticated")["message"]
    )
    c = client_for(member)
    assert error(c.post(URL, headers={"Upload-Length": "10"}), 412, "tus_version")["message"] == (
        "Send Tus-Resumable: 1.0.0."
    )
    assert error(c.post(URL, headers=TUS), 400, "invalid")["fields"].keys() == {"Upload-Length"}
    assert error(c.get(URL, headers=TUS), 405, "method_not_allowed") and c.get(URL)["Allow"] == "OPTIONS, POST"
    assert "at most" in error(create(c, submission, track.max_upload_bytes + 1), 413, "too_large")["message"]
    location = create(c, submission, 1000)["Location"]
    assert patch(c, location, 0, b"a" * 100).status_code == 204
    mismatch = error(patch(c, location, 50, b"b" * 100), 409, "offset_mismatch")
    assert mismatch["message"] == "Upload-Offset is 50 but the server has 100 bytes."
    wrong_type = c.generic(
        "PATCH", location, data=b"x", content_type="text/plain", headers={**TUS, "Upload-Offset": "100"}
    )
    error(wrong_type, 415, "unsupported_media_type")
    assert error(patch(c, location, 100, b"c", **{"Upload-Checksum": checksum(b"d")}), 460, "checksum_mismatch")
    Upload.objects.filter(pk=location.rstrip("/").rsplit("/", 1)[1]).update(expires_at=timezone.now())
    assert error(c.head(location, headers=TUS), 410, "gone")
    assert error(
        client_for(member).delete("/api/v1/uploads/00000000-0000-0000-0000-000000000000/", headers=TUS),
        404,
        "not_found",
    )
