"""The first journey: two students form a team and an organizer makes it eligible for the student awards."""

import pytest
from django.utils import timezone

from portal.models import Profile, Team
from tests.browser.conftest import PHONE, verification_link
from tests.factories import ChallengeFactory, TrackFactory
from tests.portal.conftest import PDF, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "a-long-demo-passphrase-42"


def sign_up_and_verify(page, live_server, mailoutbox, email: str) -> None:
    page.goto(f"{live_server.url}/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/accounts/confirm-email/")
    link = verification_link(mailoutbox, email)
    page.goto(link.replace("http://testserver", live_server.url))
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/accounts/login/" in page.url:
        page.fill("input[name=login]", email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()


def declare_student(page, live_server, name: str) -> None:
    page.goto(f"{live_server.url}/profile/")
    page.fill("input[name=display_name]", name)
    page.fill("input[name=affiliation]", "University of Example")
    page.check("input[name=is_student]")
    page.set_input_files(
        "input[name=student_evidence]", files=[{"name": "card.pdf", "mimeType": "application/pdf", "buffer": PDF}]
    )
    page.click("button:has-text('Save profile')")
    page.wait_for_selector("text=Your profile is saved.")
    assert page.is_visible("text=Student · awaiting review")


def test_two_students_form_a_team_and_become_eligible(new_page, live_server, mailoutbox, shot):
    challenge = ChallengeFactory(name="LLM Efficiency Challenge", max_team_size=5)
    TrackFactory(challenge=challenge, name="NVIDIA RTX 4090").prizes.create(kind="place", place=1, amount_usd=5000)
    organizer = make_user("organizer@example.org", is_staff=True, is_superuser=True)

    alice = new_page()
    alice.goto(live_server.url)
    assert alice.is_visible("text=NVIDIA RTX 4090")
    shot(alice, "01-home")
    sign_up_and_verify(alice, live_server, mailoutbox, "alice@example.org")
    assert alice.is_visible("text=Log out")

    alice.goto(f"{live_server.url}/team/")
    alice.fill("input[name=name]", "Browser Brigade")
    alice.click("button:has-text('Create team')")
    alice.wait_for_selector("h1:has-text('Browser Brigade')")
    declare_student(alice, live_server, "Alice Adams")

    alice.goto(f"{live_server.url}/team/")
    alice.click("#create-link")
    invite_link = alice.input_value("#invite-link")
    assert "/invite/" in invite_link
    shot(alice, "02-team-with-invite-link")

    bob = new_page()
    sign_up_and_verify(bob, live_server, mailoutbox, "bob@example.org")
    bob.goto(invite_link)
    bob.click("button:has-text('Accept and join')")
    bob.wait_for_selector("text=Welcome to Browser Brigade!")
    declare_student(bob, live_server, "Bob Brown")

    alice.goto(f"{live_server.url}/team/")
    assert alice.inner_text("#eligibility-summary") == "0 of 2 members verified"
    assert alice.inner_text("#eligibility-badge") == "Not eligible for student awards"
    assert "awaiting an organizer" in alice.inner_text("#eligibility-missing")
    shot(alice, "03-team-pending")

    staff = new_page()
    staff.goto(f"{live_server.url}/admin/login/")
    staff.fill("input[name=username]", organizer.username)
    staff.fill("input[name=password]", "correct horse battery")
    staff.click("input[type=submit]")
    staff.goto(f"{live_server.url}/admin/portal/profile/?student_status__exact=pending")
    staff.check("#action-toggle")
    staff.select_option("select[name=action]", "verify_students")
    staff.click("button[name=index]")
    staff.wait_for_selector("text=Verified 2 students.")
    shot(staff, "04-admin-verified")

    alice.reload()
    assert alice.inner_text("#eligibility-badge") == "Eligible for student awards"
    assert alice.inner_text("#eligibility-summary") == "2 of 2 members verified"
    shot(alice, "05-team-eligible")

    team = Team.objects.with_eligibility().get(name="Browser Brigade")
    assert team.student_eligible and team.member_count == 2
    assert Profile.objects.filter(student_status="verified", student_reviewed_by=organizer).count() == 2
    assert timezone.now() < challenge.submission_deadline


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_pages_fit_the_screen(new_page, live_server, shot, viewport):
    from tests.browser.conftest import DESKTOP

    challenge = ChallengeFactory(name="LLM Efficiency Challenge", max_team_size=5, rules="Open data only.")
    TrackFactory(challenge=challenge, name="NVIDIA A100", gpu_memory_gb=80)
    user = make_user("carol@example.org")
    page = new_page(PHONE if viewport == "phone" else DESKTOP)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=login]", user.email)
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Log out", state="attached")
    for path, name in [("/", "home"), ("/profile/", "profile"), ("/team/", "team"), ("/invitations/", "invitations")]:
        page.goto(live_server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        shot(page, f"{name}-{viewport}")
        assert overflow <= 0, f"{path} scrolls sideways on {viewport}"
    page.goto(live_server.url + "/")
    # dates.js rewrote the UTC fallback into the visitor's zone (Europe/Berlin → CET/CEST or GMT+1/2).
    local = page.inner_text("#dates time[data-local]")
    assert "UTC" not in local
