"""The team's live progress view and the organizers' queue page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from evaluation.models import EvaluationJob, WorkerHeartbeat
from evaluation.services.queueing import evaluation_claim_next
from tests.factories import MembershipFactory, UserFactory, ValidatedSubmissionFactory, queued

pytestmark = pytest.mark.django_db
HIDDEN_RUN = "offline:task=date_reasoning,shots=0,model=challenge_submission"


def _running(role: str):
    submission = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t", hostname="gpu-box-1")
    EvaluationJob.objects.filter(pk=job.pk).update(
        progress={"suite_role": role, "runs_done": 1, "runs_total": 4, "current_run": HIDDEN_RUN, "eta_s": 90},
        log_tail=f"Running {HIDDEN_RUN} ... prompt: What day comes after Monday?",
    )
    return submission


def test_member_sees_live_progress_of_the_open_suite(client):
    submission = _running("open")
    client.force_login(submission.team.captain)
    page = client.get(reverse("submission_progress", args=[submission.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'hx-trigger="every 3s"' in html  # polls without reloading the page
    partial = client.get(reverse("submission_progress_partial", args=[submission.pk])).content.decode()
    assert "1 of 4" in partial and HIDDEN_RUN in partial and "about 1 min 30 s" in partial
    assert "<html" not in partial


def test_hidden_suite_names_prompts_and_log_never_reach_participants(client):
    submission = _running("hidden")
    client.force_login(submission.team.captain)
    partial = client.get(reverse("submission_progress_partial", args=[submission.pk])).content.decode()
    assert "1 of 4" in partial and "Hidden suite" in partial
    assert "date_reasoning" not in partial and "Monday" not in partial
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    organizer_view = client.get(reverse("submission_progress_partial", args=[submission.pk])).content.decode()
    assert "date_reasoning" in organizer_view


def test_other_teams_and_anonymous_cannot_see_progress(client):
    submission = _running("open")
    outsider = MembershipFactory().user
    client.force_login(outsider)
    assert client.get(reverse("submission_progress", args=[submission.pk])).status_code == 404
    assert client.post(reverse("submission_cancel", args=[submission.pk])).status_code == 404
    client.logout()
    assert client.get(reverse("submission_progress_partial", args=[submission.pk])).status_code == 302


def test_waiting_team_sees_its_queue_position(client):
    first = queued(ValidatedSubmissionFactory())
    second = queued(ValidatedSubmissionFactory(track=first.track))
    client.force_login(second.team.captain)
    html = client.get(reverse("submission_progress", args=[second.pk])).content.decode()
    assert 'id="queue-position">2<' in html
    assert "no estimate yet" in html


def test_member_cancels_a_queued_submission(client):
    submission = queued(ValidatedSubmissionFactory())
    client.force_login(submission.team.captain)
    response = client.post(reverse("submission_cancel", args=[submission.pk]))
    assert response.status_code == 302
    submission.refresh_from_db()
    assert submission.status == "cancelled"


def test_queue_page_is_for_organizers_only(client, django_assert_max_num_queries):
    submission = _running("hidden")
    WorkerHeartbeat.objects.create(hostname="gpu-box-1", queues=submission.track.queue_name, gpu="NVIDIA H200")
    client.force_login(submission.team.captain)
    assert client.get(reverse("evaluation_queue")).status_code == 302  # to the admin login
    client.force_login(UserFactory(is_staff=True))
    with django_assert_max_num_queries(15):
        html = client.get(reverse("evaluation_queue")).content.decode()
    assert "gpu-box-1" in html and "NVIDIA H200" in html and submission.track.queue_name in html
    assert "alive" in html
