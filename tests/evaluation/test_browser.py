"""The upload page in Chromium: pick an archive, watch the bar reach 100 %, land on a validated submission."""

import pytest
from django.conf import settings

from evaluation.models import Submission
from tests.evaluation.archive_tools import tar_folder
from tests.factories import SubmissionFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(browser, live, client, member):
    client.force_login(member)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(base_url=live.url)
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live.url}])
    yield context.new_page()
    context.close()


def test_upload_an_archive_and_watch_it_validate(page, team, track, base_model, member, model_dirs, tmp_path):
    submission = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    archive = tar_folder(model_dirs["full"], tmp_path / "tiny-llama.tar.gz")
    page.goto(f"/submissions/{submission.pk}/upload/")
    page.set_input_files("#archive-input", str(archive))
    page.click("#start-button")
    page.wait_for_function("document.getElementById('progress-bar').textContent === '100 %'", timeout=60_000)
    assert page.get_attribute("#progress", "aria-valuenow") == "100"
    page.wait_for_url(f"**/submissions/{submission.pk}/", timeout=60_000)
    page.wait_for_selector("#status-badge[data-status='queued']", timeout=60_000)
    history = page.inner_text("#history")
    assert "Validating" in history and "Queued" in history
    assert "Upload complete" in history
    submission.refresh_from_db()
    assert submission.status == Submission.Status.QUEUED
    import hashlib

    assert page.inner_text("#sha256") == hashlib.sha256(archive.read_bytes()).hexdigest() == submission.sha256


def test_upload_a_folder_packed_as_tar_in_the_browser(page, team, track, base_model, member, model_dirs):
    submission = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    page.goto(f"/submissions/{submission.pk}/upload/")
    page.set_input_files("#folder-input", str(model_dirs["adapter"]))
    page.click("#start-button")
    page.wait_for_url(f"**/submissions/{submission.pk}/", timeout=60_000)
    page.wait_for_selector("#status-badge[data-status='queued']", timeout=60_000)
    submission.refresh_from_db()
    assert submission.kind == Submission.Kind.ADAPTER and submission.archive_name.endswith(".tar")


def test_cancel_deletes_the_upload(page, team, track, base_model, member, tmp_path):
    submission = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * (40 * 1024 * 1024))
    page.goto(f"/submissions/{submission.pk}/upload/")
    page.set_input_files("#archive-input", str(big))
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#start-button")
    page.wait_for_function(
        "parseInt(document.getElementById('progress').getAttribute('aria-valuenow')) > 0", timeout=60_000
    )
    page.click("#cancel-button")
    page.wait_for_url("**/submissions/", timeout=60_000)
    submission.refresh_from_db()
    assert submission.status == Submission.Status.CANCELLED and not submission.uploads.exists()


def test_a_refused_upload_shows_the_servers_message(page, team, track, base_model, member, tmp_path):
    """The server answers tus errors in the API's JSON format; the page shows its message, not the JSON."""
    submission = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    track.max_upload_bytes = 1000
    track.save(update_fields=["max_upload_bytes"])
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * 5000)
    page.goto(f"/submissions/{submission.pk}/upload/")
    page.set_input_files("#archive-input", str(big))
    page.click("#start-button")
    page.wait_for_selector("#upload-error:not(.d-none)", timeout=60_000)
    message = page.inner_text("#upload-error")
    assert "at most" in message and "{" not in message and "too_large" not in message
