"""A real Celery worker (tests/workers.py), started as a subprocess on the test database, evaluating a real
tiny model through the real engine and helm-run (suite offline-smoke).

On kombu's filesystem transport (no Redis answering) the kill test is skipped: that transport cannot redeliver.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from django.core.files.storage import default_storage

from evaluation.models import EvaluationJob, MetricRecord, Submission, SuiteResult, WorkerHeartbeat
from evaluation.services import submission_cancel, submission_quota
from tests.factories import TrackFactory, UserFactory, ValidatedSubmissionFactory, queued
from tests.workers import kill_tree, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.helm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
S = Submission.Status
J = EvaluationJob.State
BOTH_SUITES = "open=offline-smoke,hidden=offline-smoke"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from evaluation.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("pipeline-tiny"), "llama", seed=0)


def _submission(track, tiny_model) -> Submission:
    return queued(ValidatedSubmissionFactory(track=track, model_dir=str(tiny_model)))


def test_worker_evaluates_a_real_submission_end_to_end(workers, tiny_model):
    track = TrackFactory(slug="e2e")
    submission = _submission(track, tiny_model)
    workers.start(track, suites=BOTH_SUITES)
    wait_for(lambda: Submission.objects.get(pk=submission.pk).status in (S.SCORED, S.FAILED), workers, what="scored")
    submission.refresh_from_db()
    assert submission.status == S.SCORED, (submission.status_reason, workers.logs())

    job = EvaluationJob.objects.get(submission=submission)
    assert job.state == J.DONE and job.attempts == 1 and job.worker_lost_count == 0
    assert job.engine_version and job.helm_version == "0.5.16"
    assert job.progress["runs_total"] == 2 and job.progress["runs_done"] == 2, job.progress
    results = {r.role: r for r in SuiteResult.objects.filter(job=job)}
    assert set(results) == {"open", "hidden"}
    for result in results.values():
        assert [run["status"] for run in result.runs] == ["succeeded", "succeeded"]
        assert result.efficiency["wall_seconds"] > 0 and result.efficiency["output_tokens"] > 0
        assert default_storage.exists(result.raw_output_path)
        records = MetricRecord.objects.filter(suite_result=result)
        # The five aspects' raw material is there: unperturbed accuracy, worst-case robustness and
        # fairness, and bias metrics on generated text.
        assert records.filter(metric="exact_match", perturbation="", split="test").exists()
        assert records.filter(perturbation="robustness", computed_on="worst").exists()
        assert records.filter(perturbation="fairness", computed_on="worst").exists()
        assert records.filter(metric__startswith="bias_metric:").exists()
    assert results["open"].records.count() == results["hidden"].records.count()
    worker = WorkerHeartbeat.objects.get(hostname="pipeline-test@host")
    assert track.queue_name in worker.queues.split(",") and worker.current_job is None


def test_worker_killed_mid_job_is_redelivered_and_scored_exactly_once(workers, tiny_model, broker_url):
    if not broker_url.startswith("redis"):
        pytest.skip("redelivery after a killed worker needs the Redis broker")
    track = TrackFactory(slug="kill")
    submission = _submission(track, tiny_model)
    first = workers.start(track, suites=BOTH_SUITES)
    # Kill it while the hidden suite runs, after the open suite's results are stored.
    wait_for(
        lambda: (
            SuiteResult.objects.filter(job__submission=submission, role="open").exists()
            and EvaluationJob.objects.filter(submission=submission, progress__suite_role="hidden").exists()
        ),
        workers,
        what="the hidden suite to start",
    )
    open_result = SuiteResult.objects.get(job__submission=submission, role="open")
    open_records = sorted(MetricRecord.objects.filter(suite_result=open_result).values_list("id", flat=True))
    kill_tree(first)
    assert Submission.objects.get(pk=submission.pk).status == S.RUNNING

    # The same worker comes back; the broker hands it the unacknowledged message again.
    workers.start(track, suites=BOTH_SUITES, CELERY_VISIBILITY_TIMEOUT=2)
    wait_for(lambda: Submission.objects.get(pk=submission.pk).status in (S.SCORED, S.FAILED), workers, what="scored")
    submission.refresh_from_db()
    assert submission.status == S.SCORED, (submission.status_reason, workers.logs())
    job = EvaluationJob.objects.get(submission=submission)  # one job, not two
    assert job.worker_lost_count == 1 and job.attempts == 2
    results = SuiteResult.objects.filter(job=job)
    assert sorted(results.values_list("role", flat=True)) == ["hidden", "open"]
    # The open suite was not redone: same row, same records.
    reloaded = results.get(role="open")
    assert reloaded.pk == open_result.pk and reloaded.finished_at == open_result.finished_at
    assert sorted(MetricRecord.objects.filter(suite_result=reloaded).values_list("id", flat=True)) == open_records
    assert MetricRecord.objects.filter(suite_result__job=job).count() == 2 * len(open_records)
    # A scored event once in the history.
    assert submission.events.filter(to_status=S.SCORED).count() == 1


def test_cancel_while_running_revokes_and_stores_nothing(workers, tiny_model):
    track = TrackFactory(slug="cancel")
    submission = _submission(track, tiny_model)
    worker = workers.start(track, suites=BOTH_SUITES)
    wait_for(
        lambda: EvaluationJob.objects.filter(submission=submission, state=J.RUNNING, progress__runs_total=2).exists(),
        workers,
        what="helm-run to start",
    )
    job = EvaluationJob.objects.get(submission=submission)
    # On a fast box the open suite may be stored already: the hidden one's helm-run is then the one
    # cancelled. Nothing is stored after the cancel either way.
    stored = set(SuiteResult.objects.filter(job=job).values_list("id", flat=True))
    records = MetricRecord.objects.filter(suite_result__job=job).count()
    assert len(stored) < 2
    submission_cancel(
        submission_id=submission.pk, actor=UserFactory(is_staff=True), reason="Cancelled by the organizers."
    )

    def engine_stopped() -> bool:
        # Only the pool process is left under the worker: the model server and helm-run are gone.
        alive = [p for p in psutil.Process(worker.pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        return len(alive) <= 1

    def tree() -> str:
        return "\n".join(
            f"{p.pid} {p.status()} {p.name()}" for p in psutil.Process(worker.pid).children(recursive=True)
        )

    try:
        wait_for(engine_stopped, workers, timeout=60, what="the engine to stop")
    except pytest.fail.Exception:
        raise AssertionError(tree())
    wait_for(
        lambda: WorkerHeartbeat.objects.filter(current_job__isnull=True).exists(), workers, timeout=30, what="idle"
    )
    time.sleep(3)  # long enough for a surviving run to have stored something
    submission.refresh_from_db()
    job.refresh_from_db()
    assert submission.status == S.CANCELLED and job.state == J.CANCELLED
    assert set(SuiteResult.objects.filter(job=job).values_list("id", flat=True)) == stored
    assert MetricRecord.objects.filter(suite_result__job=job).count() == records


def test_infrastructure_failure_is_retried_then_failed_without_using_quota(workers, tiny_model):
    track = TrackFactory(slug="infra")
    submission = _submission(track, tiny_model)
    used = submission_quota(team=submission.team, track=track).used
    # The model server is given no time to become healthy: the engine's ServerUnhealthy (ours).
    workers.start(
        track,
        EVALUATION_HEALTH_TIMEOUT_SECONDS=0,
        EVALUATION_MAX_INFRA_ATTEMPTS=2,
        EVALUATION_RETRY_BACKOFF_SECONDS=1,
    )
    wait_for(lambda: Submission.objects.get(pk=submission.pk).status == S.FAILED, workers, timeout=120, what="failed")
    submission.refresh_from_db()
    assert submission.failure_kind == Submission.FailureKind.INFRA
    assert "did not become healthy" in submission.status_reason
    job = EvaluationJob.objects.get(submission=submission)
    assert job.attempts == 2
    statuses = list(submission.events.values_list("to_status", flat=True))
    assert statuses[-4:] == [S.RUNNING, S.QUEUED, S.RUNNING, S.FAILED]
    assert submission_quota(team=submission.team, track=track).used == used - 1


def test_a_gpu_worker_has_standbys_waiting_before_its_first_evaluation(workers):
    """The first evaluation after a worker starts need not import torch, transformers and HELM."""
    track = TrackFactory(slug="boot")
    worker = workers.start(track, EVALUATION_STANDBY="1")

    def standbys() -> list[str]:
        kinds = []
        for process in psutil.Process(worker.pid).children(recursive=True):
            try:
                cmdline = process.cmdline()
            except psutil.Error:
                continue
            if "evaluation.engine.standby" in cmdline:
                kinds.append(cmdline[-1])
        return sorted(kinds)

    wait_for(lambda: standbys() == ["helm", "server"], workers, timeout=60, what="a standby server and helm-run")
    assert not EvaluationJob.objects.exists()
