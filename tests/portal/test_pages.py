import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from portal.models import Invitation, Membership, Profile, Team
from portal.services import invitation_create, profile_update, team_create
from tests.factories import TrackFactory
from tests.portal.conftest import PDF, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(challenge, user):
    return team_create(user=user, challenge=challenge, name="Low Rank")


def test_home_shows_dates_tracks_prizes_and_rules(client, challenge):
    challenge.rules = "Open data only.\n\nOne GPU."
    challenge.description = "Fine-tune in a day."
    challenge.save()
    track = TrackFactory(challenge=challenge, name="RTX 4090 track", gpu_memory_gb=24, gpu_price_usd=2000)
    track.prizes.create(kind="place", place=1, amount_usd=5000)
    track.prizes.create(kind="student", amount_usd=500, count=2)
    html = client.get(reverse("home")).content.decode()
    assert "RTX 4090 track" in html and "24 GB" in html and "$2,000" in html
    assert "$5,000" in html and "Student award" in html and "× 2" in html
    assert "<li>Open data only.</li>" in html and "Fine-tune in a day." in html
    assert html.count("<time data-local") >= 5
    assert f'data-countdown="{challenge.submission_deadline.isoformat()}"' in html
    assert "AoE" in html


@pytest.mark.parametrize("name", ["profile", "my_team", "invitations"])
def test_private_pages_redirect_anonymous_visitors_to_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize("name", ["account_login", "account_signup", "account_reset_password"])
def test_account_pages_render_on_the_portal_layout(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert b"1 LLM + 1 GPU + 1 Day" in response.content and b"form-control" in response.content


def test_my_team_without_team_offers_create_and_invitations(client, challenge, user):
    captain = make_user()
    other = team_create(user=captain, challenge=challenge, name="Others")
    invitation_create(actor=captain, team=other, email=user.email)
    client.force_login(user)
    html = client.get(reverse("my_team")).content.decode()
    assert "Create a team" in html and "Others" in html and "Accept" in html


def test_my_team_redirects_members_to_their_team(client, team, user):
    client.force_login(user)
    response = client.get(reverse("my_team"))
    assert response.status_code == 302 and response["Location"] == reverse("team_detail", args=[team.slug])


def test_create_team_page_flow_and_duplicate_name(client, challenge, user):
    client.force_login(user)
    response = client.post(reverse("team_create"), {"name": "Low Rank"})
    assert response.status_code == 302
    team = Team.objects.get()
    assert team.captain == user
    other = make_user()
    client.force_login(other)
    response = client.post(reverse("team_create"), {"name": "low RANK"})
    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert not Membership.objects.filter(user=other).exists()


def test_team_page_shows_eligibility_with_what_is_missing(client, team, user, organizer):
    joiner = make_user()
    Membership.objects.create(team=team, user=joiner, challenge=team.challenge)
    profile_update(
        user=user,
        display_name="Ada",
        affiliation="",
        country="",
        is_student=True,
        evidence=SimpleUploadedFile("c.pdf", PDF),
    )
    Profile.objects.filter(user=user).update(student_status="verified")
    client.force_login(user)
    html = client.get(reverse("team_detail", args=[team.slug])).content.decode()
    assert "1 of 2 members verified" in html
    assert "has not declared student status" in html
    assert "Not eligible for student awards" in html
    assert "Invite teammates" in html  # captain


def test_team_page_for_outsiders_hides_private_parts(client, team):
    response = client.get(reverse("team_detail", args=[team.slug]))
    html = response.content.decode()
    assert response.status_code == 200 and "Low Rank" in html
    assert "members verified" not in html and "Invite teammates" not in html


def test_team_page_for_members_hides_captain_tools(client, team, user):
    member = make_user()
    Membership.objects.create(team=team, user=member, challenge=team.challenge)
    client.force_login(member)
    html = client.get(reverse("team_detail", args=[team.slug])).content.decode()
    assert "members verified" in html and "Invite teammates" not in html and "Leave the team" in html


def test_unknown_team_is_404_not_500(client, challenge):
    response = client.get(reverse("team_detail", args=["nope"]))
    assert response.status_code == 404 and b"No such team" in response.content


def test_invite_link_is_shown_once_and_joins(client, team, user):
    client.force_login(user)
    response = client.post(reverse("team_invite_link", args=[team.slug]), follow=True)
    html = response.content.decode()
    assert "shown only now" in html
    link = html.split('id="invite-link" value="')[1].split('"')[0]
    path = link.replace("http://testserver", "")
    again = client.get(reverse("team_detail", args=[team.slug])).content.decode()
    assert "shown only now" not in again
    joiner = make_user()
    client.force_login(joiner)
    assert "Accept and join" in client.get(path).content.decode()
    response = client.post(path, {"answer": "accept"})
    assert response.status_code == 302 and Membership.objects.filter(team=team, user=joiner).exists()
    used = client.post(path, {"answer": "accept"}, follow=True).content.decode()
    assert "already" in used


def test_invitation_link_for_anonymous_asks_to_log_in(client, team, user):
    _, token = invitation_create(actor=user, team=team)
    html = client.get(reverse("invitation_detail", args=[token])).content.decode()
    assert "Sign up" in html and "Log in" in html
    response = client.post(reverse("invitation_detail", args=[token]), {"answer": "accept"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_bad_invitation_token_is_404(client, challenge):
    response = client.get(reverse("invitation_detail", args=["garbage"]))
    assert response.status_code == 404 and b"not valid" in response.content


def test_invite_by_email_page(client, team, user, mailoutbox, django_capture_on_commit_callbacks):
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("team_invite", args=[team.slug]), {"email": "friend@example.org"}, follow=True)
    assert "Invitation sent to friend@example.org" in response.content.decode()
    assert mailoutbox[0].to == ["friend@example.org"]
    bad = client.post(reverse("team_invite", args=[team.slug]), {"email": "not-an-address"}, follow=True)
    assert "valid e-mail" in bad.content.decode()


def test_invitations_page_accept_and_decline(client, challenge, user):
    captain = make_user()
    team = team_create(user=captain, challenge=challenge, name="Others")
    invitation, _ = invitation_create(actor=captain, team=team, email=user.email)
    client.force_login(user)
    assert "Others" in client.get(reverse("invitations")).content.decode()
    response = client.post(reverse("invitation_respond", args=[invitation.pk]), {"answer": "decline"})
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == Invitation.Status.DECLINED
    # Someone else's invitation id answers 404, not 500.
    response = client.post(reverse("invitation_respond", args=[invitation.pk]), {"answer": "accept"})
    assert response.status_code == 404


def test_non_captain_post_actions_show_the_reason(client, team, user):
    member = make_user()
    Membership.objects.create(team=team, user=member, challenge=team.challenge)
    client.force_login(member)
    response = client.post(reverse("team_invite_link", args=[team.slug]), follow=True)
    assert "Only the team&#x27;s captain" in response.content.decode()
    response = client.post(reverse("team_member_remove", args=[team.slug, user.pk]), follow=True)
    assert "Only the team&#x27;s captain" in response.content.decode()
    assert team.memberships.count() == 2


def test_remove_unknown_member_is_404(client, team, user):
    client.force_login(user)
    assert client.post(reverse("team_member_remove", args=[team.slug, 999999])).status_code == 404


def test_get_on_post_only_actions_is_405(client, team, user):
    client.force_login(user)
    assert client.get(reverse("team_leave", args=[team.slug])).status_code == 405


def test_leave_and_dissolve_from_the_page(client, team, user):
    client.force_login(user)
    response = client.post(reverse("team_leave", args=[team.slug]), follow=True)
    assert "dissolved" in response.content.decode()
    assert not Team.objects.exists()


def test_profile_page_saves_and_shows_rejection_reason(client, user, organizer):
    client.force_login(user)
    response = client.post(
        reverse("profile"),
        {
            "display_name": "Ada",
            "affiliation": "Uni",
            "country": "NG",
            "is_student": "on",
            "student_evidence": SimpleUploadedFile("card.pdf", PDF),
        },
    )
    assert response.status_code == 302
    from portal.services import student_reject

    student_reject(actor=organizer, profile_ids=[user.profile.pk], reason="Name does not match.")
    html = client.get(reverse("profile")).content.decode()
    assert "Evidence rejected" in html and "Name does not match." in html


def test_profile_page_wrong_file_type_shows_error(client, user):
    client.force_login(user)
    response = client.post(
        reverse("profile"),
        {"display_name": "Ada", "is_student": "on", "student_evidence": SimpleUploadedFile("x.pdf", b"GIF89a....")},
    )
    assert response.status_code == 200 and "PDF, PNG or JPEG" in response.content.decode()


def test_profile_page_bad_country_is_a_form_error(client, user):
    client.force_login(user)
    response = client.post(reverse("profile"), {"country": "ZZZ"})
    assert response.status_code == 200 and b"Select a valid choice" in response.content


def test_pages_without_any_challenge_do_not_crash(client, user):
    client.force_login(user)
    assert client.get(reverse("home")).status_code == 200
    assert client.get(reverse("my_team")).status_code == 404
    assert client.get(reverse("profile")).status_code == 200
    assert client.get(reverse("invitations")).status_code == 200


def test_pages_name_an_icon_that_exists(client, challenge):
    """Browsers ask for /favicon.ico when a page names no icon: a 404 in every page's console."""
    import re

    from django.contrib.staticfiles import finders

    for page in (reverse("home"), reverse("admin:login")):
        html = client.get(page).content.decode()
        (href,) = re.findall(r'<link rel="icon" href="([^"]+)"', html)
        assert finders.find(href.removeprefix("/static/")), page
    assert "LLM Efficiency Challenge · organizers" in html  # the admin's own header is still there
