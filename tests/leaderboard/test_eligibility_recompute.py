"""Student eligibility is fixed into the standings when they are computed: an organizer's review, a member
joining or leaving recomputes the tracks where the team has scored submissions (after the commit)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from leaderboard.models import Standing, StandingsSnapshot
from portal import services
from portal.models import Profile
from tests.factories import UserFactory

from .conftest import reveal

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _eager_celery():
    """The recomputation task runs in-process, through Celery's real task path."""
    from portal.celery import app

    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


def standing(team) -> Standing:
    return Standing.objects.get(snapshot__is_current=True, team=team)


def student_awards(track) -> list[int]:
    snapshot = StandingsSnapshot.objects.current().get(track=track)
    return [a["team_id"] for a in snapshot.awards["awards"] if a["kind"] == "student"]


def declare_student(user) -> Profile:
    return services.profile_update(
        user=user,
        display_name="Stu Dent",
        affiliation="Uni",
        country="DE",
        is_student=True,
        evidence=SimpleUploadedFile("card.pdf", b"%PDF-1.4 enrolment", content_type="application/pdf"),
    )


@pytest.fixture
def scored(build):
    """Four teams ahead of a one-member team whose captain declared himself a student (pending review)."""
    for i in range(4):
        build.entry(build.team(f"Top {i}"), 0.9 - i / 100, 0.9 - i / 100)
    team = build.team("Students")
    build.entry(team, 0.2, 0.2)
    build.recompute()
    reveal(build.track)
    declare_student(team.captain)
    return build, team


def test_verify_then_reject_recomputes_the_badge_and_the_student_award(
    scored, organizer, django_capture_on_commit_callbacks
):
    build, team = scored
    assert not standing(team).student_eligible and team.pk not in student_awards(build.track)
    profile = team.captain.profile
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.student_verify(actor=organizer, profile_ids=[profile.pk])
        assert not standing(team).student_eligible  # not before the commit
    assert callbacks
    assert standing(team).student_eligible and team.pk in student_awards(build.track)
    assert StandingsSnapshot.objects.current().get(track=build.track).trigger == "student status verified"

    with django_capture_on_commit_callbacks(execute=True):
        services.student_reject(actor=organizer, profile_ids=[profile.pk], reason="Expired card.")
    assert not standing(team).student_eligible and team.pk not in student_awards(build.track)


def test_joining_and_leaving_recompute_the_teams_tracks(scored, organizer, django_capture_on_commit_callbacks):
    build, team = scored
    services.student_verify(actor=organizer, profile_ids=[team.captain.profile.pk])
    build.recompute()
    assert standing(team).student_eligible

    newcomer = UserFactory()
    invitation, _ = services.invitation_create(actor=team.captain, team=team)
    with django_capture_on_commit_callbacks(execute=True):
        services.invitation_accept(user=newcomer, invitation=invitation)
    assert not standing(team).student_eligible  # a member who is not a verified student
    assert StandingsSnapshot.objects.current().get(track=build.track).trigger == f"team #{team.pk}: a member joined"

    with django_capture_on_commit_callbacks(execute=True):
        services.team_leave(user=newcomer, team=team)
    assert standing(team).student_eligible and team.pk in student_awards(build.track)

    other = UserFactory()
    invitation, _ = services.invitation_create(actor=team.captain, team=team)
    services.invitation_accept(user=other, invitation=invitation)
    build.recompute()
    with django_capture_on_commit_callbacks(execute=True):
        services.team_member_remove(actor=team.captain, team=team, user=other, reason="Wrong team.")
    assert standing(team).student_eligible


def test_nothing_is_recomputed_when_eligibility_cannot_change(scored, organizer, django_capture_on_commit_callbacks):
    build, team = scored
    before = StandingsSnapshot.objects.filter(track=build.track).count()
    with django_capture_on_commit_callbacks(execute=True):
        # A pending declaration rejected: the team was not eligible and still is not.
        services.student_reject(actor=organizer, profile_ids=[team.captain.profile.pk], reason="Unreadable.")
        # A team without scored submissions.
        lonely = build.team("No submissions")
        invitation, _ = services.invitation_create(actor=lonely.captain, team=lonely)
        services.invitation_accept(user=UserFactory(), invitation=invitation)
    assert StandingsSnapshot.objects.filter(track=build.track).count() == before
