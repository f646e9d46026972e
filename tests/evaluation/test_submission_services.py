from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from evaluation.models import Submission, SubmissionEvent
from evaluation.services import (
    QuotaExceeded,
    SubmissionsClosed,
    submission_create,
    submission_final_entry,
    submission_quota,
    submission_set_final,
    submission_transition,
)
from evaluation.services.submissions import quota_day
from portal.errors import NotFound, PermissionDenied, ServiceError
from tests.factories import SubmissionFactory

S = Submission.Status
pytestmark = pytest.mark.django_db


def create(user, track, base_model, **kw):
    fields = dict(
        user=user,
        track=track,
        base_model=base_model,
        datasets="dolly-15k (CC BY-SA)",
        finetune_gpu_hours=12.5,
        recipe_url="https://example.org/r/commit/1",
    )
    return submission_create(**{**fields, **kw})


def test_create_records_metadata_and_history(member, track, base_model):
    s = create(member, track, base_model, notes="first try")
    assert s.status == S.UPLOADING and s.team.memberships.filter(user=member).exists()
    assert s.finetune_gpu_hours == 12.5 and s.notes == "first try"
    assert list(SubmissionEvent.objects.filter(submission=s).values_list("to_status", flat=True)) == [S.UPLOADING]


def test_user_without_team_is_refused(loner, track, base_model):
    with pytest.raises(PermissionDenied, match="Join or create a team"):
        create(loner, track, base_model)


def test_after_deadline_names_the_deadline(member, track, base_model, challenge):
    challenge.submission_deadline = datetime(
        2023, 9, 30, 11, 59, tzinfo=timezone.get_fixed_timezone(-12 * 60)
    ) + timedelta(hours=12)
    challenge.save()
    with pytest.raises(SubmissionsClosed) as err:
        create(member, track, base_model)
    assert "2023-10-01 00:00" not in err.value.message  # shown in the challenge's zone, not UTC
    assert "2023-09-30 23:59 (Anywhere on Earth (UTC−12))" in err.value.message
    assert err.value.status_code == 403


def test_before_opening_is_refused(member, track, base_model, challenge):
    challenge.submissions_open_at = timezone.now() + timedelta(days=1)
    challenge.save()
    with pytest.raises(SubmissionsClosed, match="Submissions open at"):
        create(member, track, base_model)


def test_gpu_hours_above_the_track_limit_are_refused(member, track, base_model):
    with pytest.raises(ServiceError, match="at most 24 GPU-hours"):
        create(member, track, base_model, finetune_gpu_hours=24.5)


def test_quota_counts_per_team_per_track_and_names_reset_time(member, teammate, track, base_model, challenge):
    for user in (member, teammate, member):
        create(user, track, base_model)
    with pytest.raises(QuotaExceeded) as err:
        create(teammate, track, base_model)
    _, end = quota_day(challenge)
    assert err.value.status_code == 429 and err.value.resets_at == end
    assert "resets at" in err.value.message and "Anywhere on Earth" in err.value.message
    quota = submission_quota(team=member.memberships.get().team, track=track)
    assert (quota.used, quota.remaining) == (3, 0)


def test_infra_failures_and_abandoned_uploads_do_not_count(member, track, base_model):
    a, b, c = (create(member, track, base_model) for _ in range(3))
    submission_transition(submission_id=a.pk, to=S.VALIDATING)
    submission_transition(submission_id=a.pk, to=S.FAILED, failure_kind="infra", reason="validator crashed")
    submission_transition(submission_id=b.pk, to=S.CANCELLED, reason="upload cancelled")
    assert submission_quota(team=c.team, track=track).remaining == 2
    create(member, track, base_model)
    create(member, track, base_model)
    with pytest.raises(QuotaExceeded):
        create(member, track, base_model)


def test_user_failures_count(member, track, base_model):
    s = create(member, track, base_model)
    submission_transition(submission_id=s.pk, to=S.VALIDATING)
    submission_transition(submission_id=s.pk, to=S.FAILED, failure_kind="user", reason="bad file")
    assert submission_quota(team=s.team, track=track).used == 1


def test_quota_day_follows_the_challenge_timezone(challenge):
    # 2023-07-01 05:00 UTC is still 2023-06-30 in Anywhere on Earth (UTC−12): the day ends at 12:00 UTC.
    start, end = quota_day(challenge, datetime(2023, 7, 1, 5, 0, tzinfo=UTC))
    assert end - start == timedelta(days=1)
    assert (start.astimezone(UTC), end.astimezone(UTC)) == (
        datetime(2023, 6, 30, 12, tzinfo=UTC),
        datetime(2023, 7, 1, 12, tzinfo=UTC),
    )


def test_quota_is_separate_per_track(member, track, base_model, challenge):
    from tests.factories import TrackFactory

    other = TrackFactory(challenge=challenge, slug="a100")
    for _ in range(3):
        create(member, track, base_model)
    assert create(member, other, base_model).track == other


def test_final_entry_defaults_to_most_recent_scored_and_can_be_chosen(team, track, base_model, member):
    old, new, queued = (SubmissionFactory(team=team, track=track, base_model=base_model) for _ in range(3))
    for s in (old, new):
        for to in (S.VALIDATING, S.QUEUED, S.RUNNING, S.SCORED):
            submission_transition(submission_id=s.pk, to=to)
    assert submission_final_entry(team=team, track=track) == new
    submission_set_final(user=member, team=team, track=track, submission_id=old.pk)
    assert submission_final_entry(team=team, track=track) == old
    submission_set_final(user=member, team=team, track=track, submission_id=new.pk)
    assert list(Submission.objects.filter(is_final=True)) == [new]
    assert submission_set_final(user=member, team=team, track=track, submission_id=None) == new
    assert not Submission.objects.filter(is_final=True).exists()
    with pytest.raises(ServiceError, match="uploading"):
        submission_set_final(user=member, team=team, track=track, submission_id=queued.pk)


def test_final_entry_cannot_be_set_by_another_team(team, track, base_model, outsider):
    s = SubmissionFactory(team=team, track=track, base_model=base_model)
    with pytest.raises(NotFound):
        submission_set_final(user=outsider, team=team, track=track, submission_id=s.pk)
