"""The pipeline's services against the real database: round robin, redelivery, reaper, organizer
actions, infrastructure failures, stored results and notifications. The worker tests run the engine.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from evaluation.models import EvaluationJob, MetricRecord, Submission, SuiteResult, WorkerHeartbeat
from evaluation.selectors import scored_results_for_track
from evaluation.services import (
    evaluation_reap_stale_jobs,
    submission_cancel,
    submission_disqualify,
    submission_notify,
    submission_quota,
    submission_requeue,
    submission_rerun,
    submission_set_priority,
)
from evaluation.services.engine import EngineInfraError, outcome_from_document
from evaluation.services.jobs import (
    WORKER_LOST_REASON,
    _finish_scored,
    _infra_retry_or_fail,
    _resume_or_claim,
    _store_suite_result,
)
from evaluation.services.queueing import evaluation_claim_next, job_pending_get_or_create, queue_estimates, queue_order
from portal.errors import Conflict, ServiceError
from portal.models import AuditEvent
from tests.factories import TeamFactory, TrackFactory, UserFactory, ValidatedSubmissionFactory, queued

pytestmark = pytest.mark.django_db
S = Submission.Status
J = EvaluationJob.State


def _doc(value: float = 0.5, runs: int = 2) -> dict:
    names = [f"offline:task=t{i},model=m" for i in range(runs)]
    return {
        "schema_version": "1.0",
        "engine_version": "0.1.0",
        "helm_version": "0.5.16",
        "suite": "offline-smoke",
        "status": "succeeded",
        "runs": [
            {"name": n, "scenario": f"s{i}", "main_metric": "exact_match", "status": "succeeded"}
            for i, n in enumerate(names)
        ],
        "records": [
            {
                "run": n,
                "scenario": f"s{i}",
                "metric": "exact_match",
                "split": "test",
                "sub_split": None,
                "perturbation": p,
                "computed_on": c,
                "value": value,
                "count": 6,
            }
            for i, n in enumerate(names)
            for p, c in ((None, None), ("robustness", "worst"))
        ],  # fmt: skip
        "efficiency": {"wall_seconds": 12.5, "gpu_seconds": 12.5, "output_tokens_per_second": 30.0},
        "hardware": {"gpu_name": None},
    }


def _claim_and_finish(track, task_id: str) -> Submission:
    job = evaluation_claim_next(track_id=track.pk, task_id=task_id, hostname="w@test")
    assert job is not None
    _store_suite_result(
        job_id=job.pk, task_id=task_id, role="open", suite="offline-smoke", outcome=outcome_from_document(_doc())
    )
    _finish_scored(job_id=job.pk, task_id=task_id, roles=["open"])
    return Submission.objects.get(pk=job.submission_id)


def test_round_robin_teams_take_turns_and_priority_goes_first(settings):
    settings.EVALUATION_SUITES = ["open=offline-smoke"]
    track = TrackFactory()
    teams = [TeamFactory(challenge=track.challenge) for _ in range(3)]
    # Team A queues three at once, then B two, then C one.
    a = [queued(ValidatedSubmissionFactory(track=track, team=teams[0])) for _ in range(3)]
    b = [queued(ValidatedSubmissionFactory(track=track, team=teams[1])) for _ in range(2)]
    c = [queued(ValidatedSubmissionFactory(track=track, team=teams[2]))]
    expected = [a[0], b[0], c[0], a[1], b[1], a[2]]
    assert [e.submission_id for e in queue_order(track.pk)] == [s.pk for s in expected]
    estimates = queue_estimates(track.pk, track.queue_name)
    assert [estimates[s.pk]["position"] for s in expected] == [1, 2, 3, 4, 5, 6]
    assert estimates[a[0].pk]["estimated_start"] is None  # nothing finished yet: no estimate

    started = [_claim_and_finish(track, f"task-{i}") for i in range(2)]
    assert [s.pk for s in started] == [a[0].pk, b[0].pk]
    # An organizer bumps A's last one: it jumps ahead of the round.
    submission_set_priority(
        submission_id=a[2].pk, priority=5, actor=UserFactory(is_staff=True), reason="hardware check"
    )
    assert queue_order(track.pk)[0].submission_id == a[2].pk
    order_after = [_claim_and_finish(track, f"task-x{i}").pk for i in range(4)]
    assert order_after == [a[2].pk, c[0].pk, b[1].pk, a[1].pk]
    assert AuditEvent.objects.filter(action="submission.priority", object_id=str(a[2].pk)).exists()


def test_estimated_start_comes_from_recent_durations(settings):
    settings.EVALUATION_SUITES = ["open=offline-smoke"]
    track = TrackFactory()
    done = _claim_and_finish(track, "t-done") if queued(ValidatedSubmissionFactory(track=track)) else None
    EvaluationJob.objects.filter(submission=done).update(
        started_at=timezone.now() - timedelta(seconds=600), finished_at=timezone.now()
    )
    waiting = [queued(ValidatedSubmissionFactory(track=track)) for _ in range(2)]
    estimates = queue_estimates(track.pk, track.queue_name)
    first, second = (estimates[s.pk]["estimated_start"] for s in waiting)
    # One slot, 600 s per job: the second waits one job longer than the first.
    assert round((second - first).total_seconds()) == 600


def test_claim_skips_submissions_in_backoff_and_ones_taken(settings):
    track = TrackFactory()
    s1 = queued(ValidatedSubmissionFactory(track=track))
    s2 = queued(ValidatedSubmissionFactory(track=track))
    backoff = job_pending_get_or_create(s1.pk)
    EvaluationJob.objects.filter(pk=backoff.pk).update(retry_at=timezone.now() + timedelta(minutes=5))
    job = evaluation_claim_next(track_id=track.pk, task_id="t1", hostname="w")
    assert job.submission_id == s2.pk
    assert evaluation_claim_next(track_id=track.pk, task_id="t2", hostname="w") is None
    s2.refresh_from_db()
    assert s2.status == S.RUNNING and job.attempts == 1 and job.task_id == "t1"


def test_redelivered_message_resumes_once_then_kill_twice_fails(settings):
    settings.EVALUATION_MAX_WORKER_LOSSES = 2
    submission = queued(ValidatedSubmissionFactory())
    job = _resume_or_claim(track_id=submission.track_id, task_id="same-task", hostname="w1", is_retry=False)
    assert job.state == J.RUNNING
    # The worker died; the broker redelivers the same message (same task id) to a restarted worker.
    resumed = _resume_or_claim(track_id=submission.track_id, task_id="same-task", hostname="w1", is_retry=False)
    assert resumed.pk == job.pk and resumed.worker_lost_count == 1 and resumed.attempts == 2
    # It killed its worker again: the third delivery fails it with that reason.
    assert _resume_or_claim(track_id=submission.track_id, task_id="same-task", hostname="w1", is_retry=False) is None
    submission.refresh_from_db()
    job.refresh_from_db()
    assert submission.status == S.FAILED
    assert submission.failure_kind == Submission.FailureKind.USER
    assert submission.status_reason == WORKER_LOST_REASON.format(count=2)
    assert job.state == J.FAILED and job.worker_lost_count == 2


def test_celery_retry_of_the_same_task_is_not_a_lost_worker():
    submission = queued(ValidatedSubmissionFactory())
    _resume_or_claim(track_id=submission.track_id, task_id="t", hostname="w1", is_retry=False)
    job = _resume_or_claim(track_id=submission.track_id, task_id="t", hostname="w1", is_retry=True)
    assert job.worker_lost_count == 0 and job.attempts == 2


def test_stale_heartbeat_is_reaped_then_failed_after_the_second_loss(settings):
    settings.EVALUATION_STALE_AFTER_SECONDS = 60
    submission = queued(ValidatedSubmissionFactory())
    fresh = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t1", hostname="w1")
    other = evaluation_claim_next(track_id=fresh.track_id, task_id="t2", hostname="w2")
    EvaluationJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))

    assert evaluation_reap_stale_jobs() == {"requeued": 1, "failed": 0}
    job.refresh_from_db()
    other.refresh_from_db()
    assert job.state == J.PENDING and job.task_id == "" and job.worker_lost_count == 1
    assert Submission.objects.get(pk=submission.pk).status == S.QUEUED
    assert other.state == J.RUNNING  # its heartbeat is fresh

    again = evaluation_claim_next(track_id=submission.track_id, task_id="t3", hostname="w3")
    assert again.pk == job.pk  # the same job continues, keeping any finished suite
    EvaluationJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert evaluation_reap_stale_jobs() == {"requeued": 0, "failed": 1}
    assert Submission.objects.get(pk=submission.pk).status == S.FAILED


def test_a_reaped_job_is_no_longer_shown_as_its_silent_workers_current_job(settings):
    settings.EVALUATION_STALE_AFTER_SECONDS = 60
    submission = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t1", hostname="w1")
    WorkerHeartbeat.objects.create(hostname="w1", queues="gpu-x", gpu="", last_seen_at=timezone.now(), current_job=job)
    EvaluationJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))

    evaluation_reap_stale_jobs()
    assert WorkerHeartbeat.objects.get(hostname="w1").current_job is None


def test_reaper_works_in_bounded_batches(settings):
    settings.EVALUATION_STALE_AFTER_SECONDS = 60
    track = TrackFactory()
    for i in range(3):
        queued(ValidatedSubmissionFactory(track=track))
        evaluation_claim_next(track_id=track.pk, task_id=f"t{i}", hostname="w")
    EvaluationJob.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert evaluation_reap_stale_jobs(batch=2)["requeued"] == 2
    assert evaluation_reap_stale_jobs(batch=2)["requeued"] == 1


def test_infrastructure_failure_retries_with_backoff_then_fails_without_using_quota(settings):
    settings.EVALUATION_MAX_INFRA_ATTEMPTS = 2
    settings.EVALUATION_RETRY_BACKOFF_SECONDS = 30
    submission = queued(ValidatedSubmissionFactory())
    team, track = submission.team, submission.track
    used_before = submission_quota(team=team, track=track).used
    job = evaluation_claim_next(track_id=track.pk, task_id="t1", hostname="w")
    _infra_retry_or_fail(job_id=job.pk, task_id="t1", message="the model server did not become healthy")
    job.refresh_from_db()
    submission.refresh_from_db()
    assert submission.status == S.QUEUED and "retried automatically" in submission.status_reason
    assert job.retry_at > timezone.now() + timedelta(seconds=20)
    # Still in backoff: no worker may take it yet.
    assert evaluation_claim_next(track_id=track.pk, task_id="t2", hostname="w") is None
    EvaluationJob.objects.filter(pk=job.pk).update(retry_at=timezone.now())
    job = evaluation_claim_next(track_id=track.pk, task_id="t3", hostname="w")
    _infra_retry_or_fail(job_id=job.pk, task_id="t3", message="helm-run failed")
    submission.refresh_from_db()
    assert submission.status == S.FAILED
    assert submission.failure_kind == Submission.FailureKind.INFRA
    assert "does not count toward your daily quota" in submission.status_reason
    assert not submission.counts_toward_quota
    assert submission_quota(team=team, track=track).used == used_before - 1


def test_results_are_upserted_never_duplicated_and_shaped_for_scoring():
    submission = queued(ValidatedSubmissionFactory(is_final=False))
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t", hostname="w")
    outcome = outcome_from_document(_doc(0.25))
    _store_suite_result(job_id=job.pk, task_id="t", role="open", suite="offline-smoke", outcome=outcome)
    # A repeated store (redelivered job) with new values updates in place.
    _store_suite_result(
        job_id=job.pk, task_id="t", role="open", suite="offline-smoke", outcome=outcome_from_document(_doc(0.75))
    )
    assert MetricRecord.objects.filter(suite_result__job=job).count() == 4
    assert set(MetricRecord.objects.values_list("value", flat=True)) == {0.75}
    _store_suite_result(job_id=job.pk, task_id="t", role="hidden", suite="offline-smoke", outcome=outcome)
    _finish_scored(job_id=job.pk, task_id="t", roles=["open", "hidden"])
    later = queued(ValidatedSubmissionFactory(track=submission.track, team=submission.team))
    unscored = evaluation_claim_next(track_id=later.track_id, task_id="t2", hostname="w")
    assert unscored is not None

    results = scored_results_for_track(submission.track_id)
    assert len(results) == 1
    entry = results[0]
    assert entry["submission_id"] == submission.pk and entry["team_id"] == submission.team_id
    assert entry["is_team_entry"] is True
    assert set(entry["suites"]) == {"open", "hidden"}
    open_suite = entry["suites"]["open"]
    assert open_suite["efficiency"]["gpu_seconds"] == 12.5
    assert open_suite["runs"][0]["main_metric"] == "exact_match"
    unperturbed = [r for r in open_suite["records"] if r["perturbation"] is None]
    assert len(unperturbed) == 2 and unperturbed[0]["split"] == "test" and unperturbed[0]["sub_split"] is None


def test_store_refused_once_cancelled():
    submission = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t", hostname="w")
    submission_cancel(submission_id=submission.pk, actor=UserFactory(is_staff=True), reason="stop")
    from evaluation.services.engine import EvaluationStopped

    with pytest.raises(EvaluationStopped):
        _store_suite_result(job_id=job.pk, task_id="t", role="open", suite="s", outcome=outcome_from_document(_doc()))
    assert not SuiteResult.objects.filter(job=job).exists()
    job.refresh_from_db()
    assert job.state == J.CANCELLED


def test_organizer_actions_go_through_transitions_and_the_audit_trail():
    staff = UserFactory(is_staff=True)
    submission = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t", hostname="w")
    submission_requeue(submission_id=submission.pk, actor=staff, reason="move to another worker")
    job.refresh_from_db()
    assert job.state == J.PENDING and Submission.objects.get(pk=submission.pk).status == S.QUEUED
    with pytest.raises(Conflict):
        submission_rerun(submission_id=submission.pk, actor=staff)
    submission_cancel(submission_id=submission.pk, actor=staff, reason="organizer test")
    submission_rerun(submission_id=submission.pk, actor=staff, reason="try again")
    assert Submission.objects.get(pk=submission.pk).status == S.QUEUED
    with pytest.raises(ServiceError):
        submission_disqualify(submission_id=submission.pk, actor=staff, reason="  ")
    submission_disqualify(submission_id=submission.pk, actor=staff, reason="Trained on the hidden test set.")
    submission.refresh_from_db()
    assert submission.status == S.DISQUALIFIED and submission.status_reason == "Trained on the hidden test set."
    actions = list(
        AuditEvent.objects.filter(object_id=str(submission.pk))
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )
    assert actions == ["submission.requeue", "submission.cancel", "submission.rerun", "submission.disqualify"]
    history = list(submission.events.values_list("to_status", flat=True))
    assert history[-4:] == [S.QUEUED, S.CANCELLED, S.QUEUED, S.DISQUALIFIED]


def test_team_is_mailed_when_scored_or_failed():
    submission = queued(ValidatedSubmissionFactory())
    job = evaluation_claim_next(track_id=submission.track_id, task_id="t", hostname="w")
    from evaluation.services.jobs import _finish_failed

    _finish_failed(job_id=job.pk, task_id="t", message="needs 30.1 GB, track 4090 allows 24 GB")
    assert submission_notify(submission_id=submission.pk) == 1
    message = mail.outbox[-1]
    assert "failed" in message.subject and "needs 30.1 GB" in message.body
    assert message.to == [submission.team.captain.email]


def test_engine_errors_are_classified_once():
    from evaluation.engine import errors as engine_errors
    from evaluation.services.engine import EngineUserError

    assert issubclass(engine_errors.ModelTooLarge, engine_errors.UserError)
    assert issubclass(engine_errors.HelmTimeout, engine_errors.InfraError)
    assert EngineInfraError("x").message == "x" and EngineUserError("y").message == "y"


def test_a_scored_job_keeps_the_progress_of_its_last_runs_even_between_heartbeats(settings, tmp_path, monkeypatch):
    """The last runs of a suite often end between two beats: the stored progress is the latest."""
    from evaluation.services import jobs

    settings.EVALUATION_SUITES = ["open=offline-smoke"]
    settings.EVALUATION_HEARTBEAT_SECONDS = 3600  # no beat during the job
    settings.EVALUATION_WORK_DIR = str(tmp_path)
    track = TrackFactory()
    queued(ValidatedSubmissionFactory(track=track))
    job = evaluation_claim_next(track_id=track.pk, task_id="t1", hostname="w@test")

    def engine(*, on_progress, **kwargs):
        on_progress({"event": "run_finished", "runs_done": 1, "runs_total": 2})
        on_progress({"event": "run_finished", "runs_done": 2, "runs_total": 2})
        return outcome_from_document(_doc())

    monkeypatch.setattr(jobs, "engine_run_suite", engine)
    jobs.evaluation_run(job_id=job.pk, task_id="t1", hostname="w@test")
    job.refresh_from_db()
    assert job.state == J.DONE
    assert job.progress["runs_done"] == 2 and job.progress["runs_total"] == 2 and job.progress["finished"]
