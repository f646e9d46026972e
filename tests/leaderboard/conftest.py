"""A track whose stored results (jobs, suite results, metric records, as the pipeline stores them)
are turned into standings by the real recomputation; pages are then read as different people."""

from datetime import timedelta

import pytest
from django.utils import timezone

from leaderboard.seeding import store_results_bulk
from leaderboard.services import standings_recompute_for_track
from portal.models import Prize, Profile
from tests.factories import (
    MembershipFactory,
    ProfileFactory,
    ScoredSubmissionFactory,
    TeamFactory,
    TrackFactory,
    UserFactory,
)

from .builders import result

OPEN_RUNS = ("mmlu:subject=anatomy", "gsm")
HIDDEN_RUNS = ("samsum", "ethics:subset=justice")


def suites(open_acc: float, hidden_acc: float, gpu: float = 100.0) -> dict:
    """An entry that is `open_acc` good on the open suite and `hidden_acc` on the hidden one."""
    return {
        "open": result(
            dict.fromkeys(OPEN_RUNS, open_acc),
            rob=dict.fromkeys(OPEN_RUNS, open_acc - 0.1),
            fair=dict.fromkeys(OPEN_RUNS, open_acc - 0.05),
            efficiency={"gpu_seconds": gpu, "output_tokens_per_second": 1000 / gpu, "peak_gpu_memory_bytes": 2**30},
        ),
        "hidden": result(dict.fromkeys(HIDDEN_RUNS, hidden_acc), efficiency={"gpu_seconds": 2 * gpu}, main="rouge_2"),
    }


class Builder:
    def __init__(self, track):
        self.track = track
        self.now = timezone.now()
        self.count = 0

    def team(self, name: str, *, students: int = 0, others: int = 0):
        """A team whose captain and extra members are verified students (`students`) or not."""
        captain = UserFactory()
        team = TeamFactory(challenge=self.track.challenge, name=name, captain=captain)
        members = [captain] + [UserFactory() for _ in range(students + others - 1)] if students + others else [captain]
        for i, user in enumerate(members):
            if user != captain:
                MembershipFactory(team=team, user=user)
            status = Profile.StudentStatus.VERIFIED if i < students else Profile.StudentStatus.NOT_STUDENT
            Profile.objects.update_or_create(user=user, defaults={"student_status": status})
        return team

    def entry(self, team, open_acc: float, hidden_acc: float, *, gpu: float = 100.0, final=True, base=None, age=0):
        self.count += 1
        kwargs = {"base_model__name": base} if base else {}
        submission = ScoredSubmissionFactory(
            track=self.track,
            team=team,
            is_final=final,
            created_by=team.captain,
            created_at=self.now - timedelta(hours=100 - self.count - age),
            **kwargs,
        )
        store_results_bulk([(submission, suites(open_acc, hidden_acc, gpu))])
        return submission

    def recompute(self):
        return standings_recompute_for_track(self.track.pk, trigger="test")


@pytest.fixture
def build(db):
    track = TrackFactory(slug="4090", name="RTX 4090")
    track.challenge.is_active = True
    track.challenge.save()
    for place, amount in ((1, 5000), (2, 2500), (3, 1000)):
        Prize.objects.create(track=track, kind=Prize.Kind.PLACE, place=place, amount_usd=amount)
    Prize.objects.create(track=track, kind=Prize.Kind.STUDENT, amount_usd=500, count=2)
    return Builder(track)


@pytest.fixture
def organizer(db):
    user = UserFactory(is_staff=True)
    ProfileFactory(user=user)
    return user


def reveal(track):
    from leaderboard.services import hidden_results_reveal

    hidden_results_reveal(challenge_id=track.challenge_id, actor=None)


@pytest.fixture(autouse=True)
def _empty_cache():
    """Cached answers are keyed by snapshot id, and SQLite reuses ids after a test's rollback."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
