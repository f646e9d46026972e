from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone

from tests.factories import ChallengeFactory, UserFactory

PDF = b"%PDF-1.4\n%demo\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32


def make_user(email: str | None = None, **kwargs):
    user = UserFactory(**({"email": email, "username": email.split("@")[0]} if email else {}), **kwargs)
    EmailAddress.objects.get_or_create(user=user, email=user.email, defaults={"verified": True, "primary": True})
    return user


@pytest.fixture
def challenge(db):
    return ChallengeFactory(max_team_size=3)


@pytest.fixture
def closed_challenge(db):
    now = timezone.now()
    return ChallengeFactory(
        starts_at=now - timedelta(days=100),
        submissions_open_at=now - timedelta(days=60),
        submission_deadline=now - timedelta(days=1),
        winners_notified_at=now + timedelta(days=10),
        presentation_at=now + timedelta(days=20),
    )


@pytest.fixture
def user(db):
    return make_user()


@pytest.fixture
def organizer(db):
    return make_user("organizer@example.org", is_staff=True)
