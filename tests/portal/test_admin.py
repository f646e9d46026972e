import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from portal.models import AuditEvent, Membership, Profile
from portal.services import profile_update, team_create
from tests.portal.conftest import PDF, make_user

pytestmark = pytest.mark.django_db
S = Profile.StudentStatus


def _student():
    user = make_user()
    profile_update(
        user=user,
        display_name="",
        affiliation="",
        country="",
        is_student=True,
        evidence=SimpleUploadedFile("c.pdf", PDF),
    )
    return Profile.objects.get(user=user)


@pytest.fixture
def admin_client(client, organizer):
    organizer.is_superuser = True
    organizer.save()
    client.force_login(organizer)
    return client


@pytest.mark.parametrize("model", ["challenge", "track", "prize", "profile", "team", "invitation", "auditevent"])
def test_every_changelist_renders_with_search(admin_client, challenge, model):
    team_create(user=make_user(), challenge=challenge, name="Low Rank")
    url = reverse(f"admin:portal_{model}_changelist")
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(url, {"q": "low"}).status_code == 200


def test_team_change_page_has_member_inline(admin_client, challenge):
    team = team_create(user=make_user(), challenge=challenge, name="Low Rank")
    html = admin_client.get(reverse("admin:portal_team_change", args=[team.pk])).content.decode()
    assert "memberships-TOTAL_FORMS" in html


def test_bulk_verify_action_writes_audit_events(admin_client, organizer):
    a, b = _student(), _student()
    response = admin_client.post(
        reverse("admin:portal_profile_changelist"),
        {"action": "verify_students", "_selected_action": [a.pk, b.pk]},
    )
    assert response.status_code == 302
    assert set(Profile.objects.filter(pk__in=[a.pk, b.pk]).values_list("student_status", flat=True)) == {S.VERIFIED}
    assert AuditEvent.objects.filter(action="student.verified", actor=organizer).count() == 2


def test_bulk_reject_asks_for_a_reason_first(admin_client, organizer):
    a, b = _student(), _student()
    url = reverse("admin:portal_profile_changelist")
    data = {"action": "reject_students", "_selected_action": [a.pk, b.pk]}
    page = admin_client.post(url, data)
    assert page.status_code == 200 and b"Reason" in page.content
    assert Profile.objects.get(pk=a.pk).student_status == S.PENDING
    no_reason = admin_client.post(url, {**data, "confirm_reject": "1", "reason": ""})
    assert no_reason.status_code == 200 and Profile.objects.get(pk=a.pk).student_status == S.PENDING
    done = admin_client.post(url, {**data, "confirm_reject": "1", "reason": "Expired card"})
    assert done.status_code == 302
    for p in Profile.objects.filter(pk__in=[a.pk, b.pk]):
        assert (p.student_status, p.student_rejection_reason) == (S.REJECTED, "Expired card")
    assert AuditEvent.objects.filter(action="student.rejected", reason="Expired card").count() == 2


def test_single_verify_and_reject_pages(admin_client):
    a, b = _student(), _student()
    assert admin_client.get(reverse("admin:portal_profile_verify", args=[a.pk])).status_code == 200
    assert admin_client.post(reverse("admin:portal_profile_verify", args=[a.pk])).status_code == 302
    assert Profile.objects.get(pk=a.pk).student_status == S.VERIFIED
    url = reverse("admin:portal_profile_reject", args=[b.pk])
    assert admin_client.get(url).status_code == 200
    assert admin_client.post(url, {"confirm_reject": "1", "reason": "Unreadable"}).status_code == 302
    assert Profile.objects.get(pk=b.pk).student_rejection_reason == "Unreadable"


def test_participants_cannot_reach_the_admin(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:portal_profile_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_audit_trail_is_read_only(admin_client, challenge):
    team_create(user=make_user(), challenge=challenge, name="Low Rank")
    event = AuditEvent.objects.get()
    html = admin_client.get(reverse("admin:portal_auditevent_change", args=[event.pk])).content.decode()
    assert 'name="_save"' not in html
    assert admin_client.get(reverse("admin:portal_auditevent_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:portal_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def _add_member_form(team, captain, newcomer) -> dict:
    """The admin's team change form, posted with the current captain kept and `newcomer` added."""
    membership = team.memberships.get()
    return {
        "challenge": team.challenge_id,
        "name": team.name,
        "slug": team.slug,
        "captain": captain.pk,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": membership.pk,
        "memberships-0-team": team.pk,
        "memberships-0-user": captain.pk,
        "memberships-1-id": "",
        "memberships-1-team": team.pk,
        "memberships-1-user": newcomer.pk,
        "invitations-TOTAL_FORMS": "0",
        "invitations-INITIAL_FORMS": "0",
        "invitations-MIN_NUM_FORMS": "0",
        "invitations-MAX_NUM_FORMS": "1000",
    }


def test_organizer_adding_a_member_in_the_admin_is_audited(admin_client, organizer, challenge):
    captain = make_user()
    team = team_create(user=captain, challenge=challenge, name="Low Rank")
    newcomer = make_user()
    url = reverse("admin:portal_team_change", args=[team.pk])
    response = admin_client.post(url, _add_member_form(team, captain, newcomer))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Membership.objects.get(user=newcomer).challenge == challenge
    event = AuditEvent.objects.get(action="team.member_added")
    assert (event.actor, event.subject_user, event.team) == (organizer, newcomer, team)


def test_admin_refuses_to_put_someone_in_a_second_team(admin_client, challenge):
    captain = make_user()
    team = team_create(user=captain, challenge=challenge, name="Low Rank")
    taken = make_user()
    team_create(user=taken, challenge=challenge, name="Other")
    response = admin_client.post(
        reverse("admin:portal_team_change", args=[team.pk]), _add_member_form(team, captain, taken)
    )
    assert response.status_code == 200 and "already in team Other" in response.content.decode()
    assert Membership.objects.get(user=taken).team.name == "Other"
