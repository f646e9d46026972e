import pytest
from django.urls import reverse

from evaluation.models import Submission
from evaluation.services import submission_transition
from tests.factories import SubmissionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def submission(team, track, base_model, member):
    s = SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    submission_transition(
        submission_id=s.pk,
        to=Submission.Status.VALIDATING,
        reason="Upload complete.",
        update={"sha256": "ab" * 32, "size_bytes": 1234},
    )
    submission_transition(
        submission_id=s.pk,
        to=Submission.Status.FAILED,
        failure_kind="user",
        reason="config.json: has auto_map. Delete it.",
    )
    return s


def test_new_submission_form_creates_and_goes_to_upload(client, member, track, base_model):
    client.force_login(member)
    page = client.get(reverse("submission_new"))
    assert (
        page.status_code == 200
        and "tiny-llama" in page.content.decode()
        and "3 of 3 left today" in page.content.decode()
    )
    r = client.post(reverse("submission_new"), {
        "track": track.pk, "base_model": base_model.pk, "datasets": "dolly (CC BY-SA)", "finetune_gpu_hours": "20.5",
        "recipe_url": "https://github.com/x/y/commit/abc", "notes": "",
    })  # fmt: skip
    s = Submission.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("submission_upload", args=[s.pk])
    upload_page = client.get(r["Location"]).content.decode()
    assert 'id="progress-bar"' in upload_page and "vendor/tus/tus.min.js" in upload_page


def test_new_submission_form_refuses_hours_over_the_limit(client, member, track, base_model):
    client.force_login(member)
    r = client.post(reverse("submission_new"), {
        "track": track.pk, "base_model": base_model.pk, "datasets": "d", "finetune_gpu_hours": "30", "recipe_url": "https://x.org",
    })  # fmt: skip
    assert r.status_code == 200 and "At most 24 GPU-hours" in r.content.decode()
    assert not Submission.objects.exists()


def test_list_shows_size_hash_status_and_quota(client, member, submission):
    client.force_login(member)
    html = client.get(reverse("submission_list")).content.decode()
    assert f'data-submission="{submission.pk}"' in html
    assert "1.2\xa0KB" in html and "abababababab" in html and "Failed" in html
    assert "2</span> of 3 submissions left today" in html and "resets at" in html


def test_detail_shows_full_history_with_reasons(client, teammate, submission):
    client.force_login(teammate)
    html = client.get(reverse("submission_detail", args=[submission.pk])).content.decode()
    assert "has auto_map" in html and "Upload complete." in html and "Submission created" not in html
    assert html.count("<tr><td><time") == 2


def test_detail_is_404_for_other_teams_and_visible_to_staff(client, outsider, submission, django_user_model):
    client.force_login(outsider)
    assert client.get(reverse("submission_detail", args=[submission.pk])).status_code == 404
    assert client.get(reverse("submission_upload", args=[submission.pk])).status_code == 404
    staff = django_user_model.objects.create_user("staff", "staff@example.org", "pw", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("submission_detail", args=[submission.pk])).status_code == 200


def test_pages_need_login(client, submission):
    assert client.get(reverse("submission_detail", args=[submission.pk])).status_code == 302
    assert client.get(reverse("submission_list")).status_code == 302


def test_status_partial_for_htmx_polling(client, member, submission):
    client.force_login(member)
    r = client.get(reverse("submission_detail", args=[submission.pk]), headers={"HX-Request": "true"})
    html = r.content.decode()
    assert 'id="submission-status"' in html and "<nav" not in html
    assert "hx-trigger" not in html  # failed is final: polling stops


def test_list_page_query_count_does_not_grow_with_submissions(
    client, member, team, track, base_model, django_assert_max_num_queries
):
    client.force_login(member)
    for _ in range(5):
        SubmissionFactory(team=team, track=track, base_model=base_model, created_by=member)
    with django_assert_max_num_queries(20):
        assert client.get(reverse("submission_list")).status_code == 200


def test_detail_says_the_memory_figure_is_what_serving_needs_not_the_weights(client, teammate, submission):
    """147,776 parameters are 0.3 MB in bf16: '1.0 GB in bf16' read as the model's size."""
    submission.parameter_count, submission.estimated_memory_gb = 147776, 1.0003
    submission.save()
    client.force_login(teammate)
    html = client.get(reverse("submission_detail", args=[submission.pk])).content.decode()
    assert "147,776 parameters · needs about 1.0 GB of GPU memory to serve in bf16" in html
