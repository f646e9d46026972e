import pytest

from portal.models import Membership, Profile, Team
from portal.selectors import team_student_eligibility
from tests.factories import ChallengeFactory, TeamFactory
from tests.portal.conftest import make_user

pytestmark = pytest.mark.django_db
S = Profile.StudentStatus


def _team(*statuses: str) -> Team:
    """A team whose members (captain first) have the given student statuses."""
    users = [make_user() for _ in statuses]
    for u, status in zip(users, statuses, strict=True):
        Profile.objects.filter(user=u).update(student_status=status)
    team = TeamFactory(challenge=ChallengeFactory(), captain=users[0])
    for u in users[1:]:
        Membership.objects.create(team=team, user=u, challenge=team.challenge)
    return team


@pytest.mark.parametrize(
    ("statuses", "eligible", "verified", "missing"),
    [
        ([S.VERIFIED], True, 1, 0),
        ([S.VERIFIED, S.VERIFIED, S.VERIFIED], True, 3, 0),
        ([S.VERIFIED, S.VERIFIED, S.PENDING], False, 2, 1),
        ([S.VERIFIED, S.REJECTED], False, 1, 1),
        ([S.NOT_STUDENT], False, 0, 1),
        ([S.PENDING, S.NOT_STUDENT, S.REJECTED], False, 0, 3),
    ],
)
def test_eligible_iff_every_member_is_verified(statuses, eligible, verified, missing):
    team = _team(*statuses)
    result = team_student_eligibility(team)
    assert (result.eligible, result.verified, result.total, len(result.missing_members)) == (
        eligible,
        verified,
        len(statuses),
        missing,
    )
    annotated = Team.objects.with_eligibility().get(pk=team.pk)
    assert (annotated.student_eligible, annotated.verified_count, annotated.member_count) == (
        eligible,
        verified,
        len(statuses),
    )


def test_summary_reads_like_the_team_page():
    result = team_student_eligibility(_team(S.VERIFIED, S.VERIFIED, S.PENDING))
    assert result.summary == "2 of 3 members verified"
    assert [p.student_status for p in result.missing_members] == [S.PENDING]


def test_an_empty_team_is_not_eligible():
    team = _team(S.VERIFIED)
    team.memberships.all().delete()
    assert team_student_eligibility(team).eligible is False
    assert Team.objects.with_eligibility().get(pk=team.pk).student_eligible is False


def test_a_new_member_makes_the_team_ineligible_until_verified():
    team = _team(S.VERIFIED, S.VERIFIED)
    assert team_student_eligibility(team).eligible
    newcomer = make_user()
    Membership.objects.create(team=team, user=newcomer, challenge=team.challenge)
    assert not team_student_eligibility(team).eligible
    Profile.objects.filter(user=newcomer).update(student_status=S.VERIFIED)
    assert team_student_eligibility(team).eligible


def test_annotation_serves_many_teams_in_one_query(django_assert_num_queries):
    teams = [_team(S.VERIFIED), _team(S.VERIFIED, S.PENDING), _team(S.NOT_STUDENT, S.VERIFIED, S.VERIFIED)]
    with django_assert_num_queries(1):
        rows = {t.pk: (t.student_eligible, t.verified_count, t.member_count) for t in Team.objects.with_eligibility()}
    assert rows == {teams[0].pk: (True, 1, 1), teams[1].pk: (False, 1, 2), teams[2].pk: (False, 2, 3)}
