from datetime import datetime

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import authenticate
from django.core.management import call_command

from portal import demo
from portal.models import AuditEvent, Challenge, Membership, Prize, Team, Track

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_the_announced_challenge_and_is_idempotent():
    call_command("seed_demo", "--announced-dates", stdout=open("/dev/null", "w"))
    counts = (
        Challenge.objects.count(),
        Track.objects.count(),
        Prize.objects.count(),
        Team.objects.count(),
        Membership.objects.count(),
        AuditEvent.objects.count(),
    )
    call_command("seed_demo", "--announced-dates", stdout=open("/dev/null", "w"))
    assert counts == (
        Challenge.objects.count(),
        Track.objects.count(),
        Prize.objects.count(),
        Team.objects.count(),
        Membership.objects.count(),
        AuditEvent.objects.count(),
    )

    challenge = Challenge.objects.get(slug=demo.CHALLENGE_SLUG)
    assert challenge.timezone == "Etc/GMT+12"
    local = {label: when.astimezone(challenge.tz).date().isoformat() for label, when in challenge.important_dates()}
    assert local == {
        "Challenge start": "2023-05-31",
        "Submissions open": "2023-06-30",
        "Submission deadline": "2023-09-30",
        "Winners notified": "2023-11-10",
        "Top-team presentation": "2023-12-15",
    }
    tracks = {t.slug: t for t in challenge.tracks.all()}
    assert (tracks["4090"].gpu_memory_gb, tracks["4090"].gpu_price_usd) == (24, 2000)
    assert (tracks["a100"].gpu_memory_gb, tracks["a100"].gpu_price_usd) == (80, 15000)
    for track in tracks.values():
        assert track.finetune_hours_limit == 24
        places = sorted(track.prizes.filter(kind="place").values_list("place", "amount_usd"))
        assert places == [(1, 5000), (2, 2500), (3, 1000)]
        assert list(track.prizes.filter(kind="student").values_list("amount_usd", "count")) == [(500, 2)]


def test_seeded_accounts_can_log_in_with_verified_addresses():
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    organizer = authenticate(username="admin", password=demo.ORGANIZER_PASSWORD)
    assert organizer is not None and organizer.is_staff
    assert EmailAddress.objects.filter(email=demo.ORGANIZER_EMAIL, verified=True).exists()
    assert not EmailAddress.objects.filter(verified=False).exists()
    eligible = {t.name: t.student_eligible for t in Team.objects.with_eligibility()}
    assert eligible == {"Lagos Low-Rank": False, "Quokka Quantizers": False, "Prague Adapters": True}


def test_default_calendar_keeps_the_announced_intervals_with_submissions_open_now():
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    challenge = Challenge.objects.get()
    assert challenge.accepts_submissions()
    announced = demo.demo_dates(announced=True)
    assert challenge.submission_deadline - challenge.submissions_open_at == (
        announced["submission_deadline"] - announced["submissions_open_at"]
    )
    assert isinstance(challenge.starts_at, datetime)
