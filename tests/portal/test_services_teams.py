from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from portal.errors import Conflict, NotFound, PermissionDenied, ServiceError
from portal.models import AuditEvent, Invitation, Membership, Team
from portal.selectors import invitation_by_token
from portal.services import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_revoke,
    team_captain_transfer,
    team_create,
    team_leave,
    team_member_remove,
)
from tests.portal.conftest import make_user

pytestmark = pytest.mark.django_db


def _team_with(challenge, captain, *members):
    team = team_create(user=captain, challenge=challenge, name="Low Rank")
    for member in members:
        invitation, _ = invitation_create(actor=captain, team=team)
        invitation_accept(user=member, invitation=invitation)
    return team


def test_create_team_makes_the_creator_captain_and_member(challenge, user):
    team = team_create(user=user, challenge=challenge, name="  Low   Rank  ")
    assert team.name == "Low Rank"
    assert team.slug == "low-rank"
    assert team.captain == user
    assert list(team.memberships.values_list("user", flat=True)) == [user.pk]
    assert AuditEvent.objects.filter(action="team.created", team=team, actor=user).count() == 1


def test_team_names_are_unique_ignoring_case(challenge, user):
    team_create(user=user, challenge=challenge, name="Low Rank")
    other = make_user()
    with pytest.raises(Conflict, match="already exists") as err:
        team_create(user=other, challenge=challenge, name="LOW rank")
    assert err.value.field == "name"
    assert Team.objects.count() == 1
    assert not Membership.objects.filter(user=other).exists()


def test_same_slug_from_different_names_gets_a_suffix(challenge, user):
    team_create(user=user, challenge=challenge, name="Low Rank")
    second = team_create(user=make_user(), challenge=challenge, name="Low-Rank")
    assert second.slug == "low-rank-2"


def test_one_team_per_user(challenge, user):
    team_create(user=user, challenge=challenge, name="First")
    with pytest.raises(Conflict, match="already in a team"):
        team_create(user=user, challenge=challenge, name="Second")
    assert not Team.objects.filter(name="Second").exists()


def test_blank_team_name_is_refused(challenge, user):
    with pytest.raises(ServiceError, match="at least 2"):
        team_create(user=user, challenge=challenge, name="  x ")


def test_accepting_a_link_invitation_joins_the_team_once(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, token = invitation_create(actor=user, team=team)
    assert invitation.token_hash == Invitation.hash_token(token) and token not in invitation.token_hash
    joiner = make_user()
    invitation_accept(user=joiner, invitation=invitation_by_token(token))
    assert Membership.objects.filter(team=team, user=joiner).exists()
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.ACCEPTED and invitation.responded_by == joiner
    with pytest.raises(Conflict, match="already been used"):
        invitation_accept(user=make_user(), invitation=invitation)
    assert team.memberships.count() == 2


def test_expired_invitation_is_refused(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, _ = invitation_create(actor=user, team=team)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    joiner = make_user()
    with pytest.raises(Conflict, match="expired"):
        invitation_accept(user=joiner, invitation=invitation)
    assert not Membership.objects.filter(user=joiner).exists()


def test_unknown_token_is_not_found(db):
    with pytest.raises(NotFound, match="not valid"):
        invitation_by_token("nope")


def test_email_invitation_is_sent_and_only_its_addressee_may_accept(
    challenge, user, django_capture_on_commit_callbacks
):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = invitation_create(
            actor=user, team=team, email="Friend@Example.org", site_url="http://x.test/"
        )
    assert invitation.email == "friend@example.org"
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["friend@example.org"]
    assert f"http://x.test/invite/{token}/" in mail.outbox[0].body
    with pytest.raises(PermissionDenied, match="sent to friend@example.org"):
        invitation_accept(user=make_user("stranger@example.org"), invitation=invitation)
    friend = make_user("friend@example.org")
    invitation_accept(user=friend, invitation=invitation)
    assert team.memberships.filter(user=friend).exists()


def test_reinviting_an_address_replaces_the_earlier_invitation(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    first, _ = invitation_create(actor=user, team=team, email="friend@example.org")
    invitation_create(actor=user, team=team, email="friend@example.org")
    first.refresh_from_db()
    assert first.status == Invitation.Status.REVOKED
    assert team.invitations.filter(status=Invitation.Status.PENDING).count() == 1


def test_inviting_someone_already_in_a_team_is_refused(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    other = make_user("taken@example.org")
    team_create(user=other, challenge=challenge, name="Other")
    with pytest.raises(Conflict, match="another team"):
        invitation_create(actor=user, team=team, email="TAKEN@example.org")


def test_declining_an_email_invitation_spends_it(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, _ = invitation_create(actor=user, team=team, email="friend@example.org")
    friend = make_user("friend@example.org")
    invitation_decline(user=friend, invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.DECLINED
    with pytest.raises(Conflict, match="declined"):
        invitation_accept(user=friend, invitation=invitation)


def test_declining_a_link_leaves_it_usable_for_others(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, _ = invitation_create(actor=user, team=team)
    invitation_decline(user=make_user(), invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING


def test_revoked_invitation_cannot_be_accepted(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, _ = invitation_create(actor=user, team=team)
    invitation_revoke(actor=user, invitation=invitation)
    with pytest.raises(Conflict, match="withdrew"):
        invitation_accept(user=make_user(), invitation=invitation)


def test_full_team_refuses_invitations_and_accepts(challenge, user):
    assert challenge.max_team_size == 3
    team = _team_with(challenge, user, make_user())
    pending, _ = invitation_create(actor=user, team=team)  # room for one more
    invitation_accept(user=make_user(), invitation=pending)
    with pytest.raises(Conflict, match="team is full"):
        invitation_create(actor=user, team=team)
    assert team.memberships.count() == 3


def test_full_team_refuses_a_late_accept(challenge, user):
    team = _team_with(challenge, user, make_user())
    first, _ = invitation_create(actor=user, team=team)
    second, _ = invitation_create(actor=user, team=team)
    invitation_accept(user=make_user(), invitation=first)
    late = make_user()
    with pytest.raises(Conflict, match="team is full"):
        invitation_accept(user=late, invitation=second)
    assert not Membership.objects.filter(user=late).exists()
    second.refresh_from_db()
    assert second.status == Invitation.Status.PENDING


def test_accepting_while_in_another_team_is_refused(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    invitation, _ = invitation_create(actor=user, team=team)
    other = make_user()
    team_create(user=other, challenge=challenge, name="Other")
    with pytest.raises(Conflict, match="already in team Other"):
        invitation_accept(user=other, invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.PENDING


def test_non_captain_cannot_invite_remove_or_transfer(challenge, user):
    member, third = make_user(), make_user()
    team = _team_with(challenge, user, member, third)
    with pytest.raises(PermissionDenied, match="captain"):
        invitation_create(actor=member, team=team)
    with pytest.raises(PermissionDenied, match="captain"):
        team_member_remove(actor=member, team=team, user=third)
    with pytest.raises(PermissionDenied, match="captain"):
        team_captain_transfer(actor=member, team=team, new_captain=member)
    team.refresh_from_db()
    assert team.captain == user and team.memberships.count() == 3


def test_non_member_cannot_leave(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    with pytest.raises(NotFound, match="not a member"):
        team_leave(user=make_user(), team=team)


def test_captain_removes_a_member_and_hands_over_captaincy(challenge, user):
    member, third = make_user(), make_user()
    team = _team_with(challenge, user, member, third)
    team_member_remove(actor=user, team=team, user=third, reason="left the project")
    assert not team.memberships.filter(user=third).exists()
    with pytest.raises(ServiceError, match="captain cannot be removed"):
        team_member_remove(actor=user, team=team, user=user)
    team_captain_transfer(actor=user, team=team, new_captain=member)
    team.refresh_from_db()
    assert team.captain == member
    actions = list(AuditEvent.objects.filter(team=team).values_list("action", flat=True))
    assert "team.member_removed" in actions and "team.captain_changed" in actions
    removal = AuditEvent.objects.get(action="team.member_removed")
    assert removal.subject_user == third and removal.reason == "left the project"


def test_captain_cannot_transfer_to_a_non_member(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    with pytest.raises(NotFound):
        team_captain_transfer(actor=user, team=team, new_captain=make_user())


def test_captain_must_hand_over_before_leaving(challenge, user):
    member = make_user()
    team = _team_with(challenge, user, member)
    with pytest.raises(ServiceError, match="Hand the captaincy"):
        team_leave(user=user, team=team)
    assert team_leave(user=member, team=team) == team
    assert team.memberships.count() == 1


def test_last_member_leaving_dissolves_the_team(challenge, user):
    team = team_create(user=user, challenge=challenge, name="Low Rank")
    assert team_leave(user=user, team=team) is None
    assert not Team.objects.filter(pk=team.pk).exists()
    assert AuditEvent.objects.filter(action="team.dissolved", data__team_name="Low Rank").exists()


def test_after_the_deadline_only_organizers_change_teams(closed_challenge, organizer):
    captain = make_user()
    with pytest.raises(ServiceError, match="deadline .* has passed") as err:
        team_create(user=captain, challenge=closed_challenge, name="Late")
    assert err.value.code == "deadline_passed"
    # An organizer may still fix things.
    team = team_create(user=organizer, challenge=closed_challenge, name="Fixed by staff")
    invitation, _ = invitation_create(actor=organizer, team=team)
    with pytest.raises(ServiceError, match="deadline"):
        invitation_accept(user=captain, invitation=invitation)
    assert team.memberships.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_accepts_never_overfill_a_team(settings):
    """Two people accept the last place at the same moment: the team lock lets exactly one in."""
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    from tests.factories import ChallengeFactory

    challenge = ChallengeFactory(max_team_size=2)
    captain = make_user()
    team = team_create(user=captain, challenge=challenge, name="Race")
    invitations = [invitation_create(actor=captain, team=team)[0] for _ in range(2)]
    racers = [make_user(), make_user()]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def accept(user, invitation):
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            invitation_accept(user=user, invitation=invitation)
            outcomes.append("joined")
        except Conflict as error:
            outcomes.append(error.code)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=accept, args=pair) for pair in zip(racers, invitations, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["joined", "team_full"]
    assert Membership.objects.filter(team=team).count() == 2
