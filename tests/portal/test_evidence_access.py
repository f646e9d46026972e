import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from portal.services import profile_update
from tests.portal.conftest import PNG, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(db):
    user = make_user()
    profile_update(
        user=user,
        display_name="",
        affiliation="",
        country="",
        is_student=True,
        evidence=SimpleUploadedFile("id.png", PNG),
    )
    return user


def _url(owner):
    return reverse("evidence_download", args=[owner.profile.pk])


def test_owner_gets_the_file_privately(client, owner):
    client.force_login(owner)
    response = client.get(_url(owner))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PNG
    assert response["Content-Type"] == "image/png"
    assert "no-store" in response["Cache-Control"]


def test_organizer_gets_the_file(client, owner, organizer):
    client.force_login(organizer)
    assert client.get(_url(owner)).status_code == 200


def test_other_participant_is_refused(client, owner):
    client.force_login(make_user())
    response = client.get(_url(owner))
    assert response.status_code == 403
    assert b"\x89PNG" not in response.content


def test_anonymous_is_sent_to_login(client, owner):
    response = client.get(_url(owner))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_no_evidence_is_404(client, user):
    client.force_login(user)
    assert client.get(reverse("evidence_download", args=[user.profile.pk])).status_code == 404


def test_missing_file_in_storage_is_404_not_500(client, owner):
    owner.profile.refresh_from_db()
    owner.profile.student_evidence.storage.delete(owner.profile.student_evidence.name)
    client.force_login(owner)
    assert client.get(_url(owner)).status_code == 404


def test_there_is_no_public_media_url(client, owner):
    # The real settings set no MEDIA_URL; the test settings set one only because live_server needs it,
    # and no URL pattern serves it either way.
    owner.profile.refresh_from_db()
    name = owner.profile.student_evidence.name
    guesses = [f"/media/{name}", f"/{name}", f"/static/{name}"]
    if settings.MEDIA_URL:
        guesses.append(f"{settings.MEDIA_URL}{name}")
    for guess in guesses:
        assert client.get(guess).status_code == 404
