"""Running one evaluation job on a GPU worker: claim, heartbeat, engine, store, finish.

Idempotent by construction: each suite's results are stored (upserted by natural key) as soon as
that suite finishes, and a job that comes back (redelivered, retried, requeued) skips the suites it
already has. Only the worker that holds the job (its task id) may write results, and only while the
submission is still running, so a cancelled or taken-over job stores nothing more.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from evaluation.models import EvaluationJob, MetricRecord, Submission, SuiteResult, WorkerHeartbeat
from evaluation.services.engine import (
    EngineInfraError,
    EngineUserError,
    EvaluationStopped,
    SuiteOutcome,
    archive_output,
    engine_log_paths,
    engine_run_suite,
    evaluation_suites,
    interrupt_main_thread,
)
from evaluation.services.queueing import evaluation_claim_next
from evaluation.services.transitions import submission_transition

logger = logging.getLogger(__name__)
S = Submission.Status
J = EvaluationJob.State

WORKER_LOST_REASON = (
    "The evaluation stopped its worker {count} times (for example by running out of memory), "
    "so it was not retried again. Check that the model loads and runs within the track's memory budget."
)
INFRA_RETRY_REASON = "A problem on our side interrupted the evaluation; it will be retried automatically. ({message})"
INFRA_FAILED_REASON = (
    "The evaluation failed {attempts} times because of a problem on our side ({message}). "
    "This does not count toward your daily quota; the organizers have been told."
)


# ---------------------------------------------------------------------------------------------
# Entry point called by the task.


def evaluation_process_slot(*, track_id: int, task_id: str, hostname: str, is_retry: bool = False) -> int | None:
    """Handle one "slot free on this track" message. Returns the job id it worked on, if any."""
    job = _resume_or_claim(track_id=track_id, task_id=task_id, hostname=hostname, is_retry=is_retry)
    if job is None:
        return None
    evaluation_run(job_id=job.pk, task_id=task_id, hostname=hostname)
    return job.pk


def _resume_or_claim(*, track_id: int, task_id: str, hostname: str, is_retry: bool) -> EvaluationJob | None:
    previous = EvaluationJob.objects.filter(task_id=task_id, state=J.RUNNING).first() if task_id else None
    if previous is not None:
        return _handle_redelivery(previous, hostname=hostname, is_retry=is_retry)
    return evaluation_claim_next(track_id=track_id, task_id=task_id, hostname=hostname)


def _handle_redelivery(job: EvaluationJob, *, hostname: str, is_retry: bool) -> EvaluationJob | None:
    """This message was already running a job: the worker that ran it died (or Celery retried)."""
    fresh_cutoff = timezone.now() - timedelta(seconds=3 * settings.EVALUATION_HEARTBEAT_SECONDS)
    if not is_retry and job.worker_hostname != hostname and job.heartbeat_at and job.heartbeat_at > fresh_cutoff:
        # Another live worker still beats for it: a duplicate delivery, not a lost worker.
        logger.warning("Job %s is still alive on %s; ignoring a duplicate delivery.", job.pk, job.worker_hostname)
        return None
    with transaction.atomic():
        job = EvaluationJob.objects.select_for_update().get(pk=job.pk)
        if job.state != J.RUNNING:
            return None
        if not is_retry:
            job.worker_lost_count += 1
            if job.worker_lost_count >= settings.EVALUATION_MAX_WORKER_LOSSES:
                _fail_locked(
                    job,
                    reason=WORKER_LOST_REASON.format(count=job.worker_lost_count),
                    failure_kind=Submission.FailureKind.USER,
                )
                return None
        job.attempts += 1
        job.worker_hostname = hostname
        job.heartbeat_at = timezone.now()
        job.save(update_fields=["worker_lost_count", "attempts", "worker_hostname", "heartbeat_at"])
    logger.warning("Resuming job %s on %s (worker losses so far: %s).", job.pk, hostname, job.worker_lost_count)
    return job


# ---------------------------------------------------------------------------------------------
# The heartbeat: a thread that proves the job is alive and carries its progress to the database.


class JobHeartbeat(threading.Thread):
    def __init__(self, *, job_id: int, submission_id: int, task_id: str, hostname: str):
        super().__init__(name=f"heartbeat-job-{job_id}", daemon=True)
        self.job_id = job_id
        self.submission_id = submission_id
        self.task_id = task_id
        self.hostname = hostname
        self.interval = settings.EVALUATION_HEARTBEAT_SECONDS
        self.progress: dict = {}
        self.log_paths: list[Path] = []
        self.suite_started = time.monotonic()
        self.stop_requested = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()

    def start_suite(self, *, role: str, suite: str, log_paths: list[Path]) -> None:
        with self._lock:
            self.progress = {"suite_role": role, "suite": suite, "runs_done": 0, "current_run": None}
            self.log_paths = log_paths
            self.suite_started = time.monotonic()

    def update(self, event: dict) -> None:
        with self._lock:
            for key in ("runs_done", "runs_total", "current_run", "instances", "requests"):
                if key in event:
                    self.progress[key] = event[key]
            self.progress["event"] = event.get("event")
            done, total = self.progress.get("runs_done") or 0, self.progress.get("runs_total")
            elapsed = time.monotonic() - self.suite_started
            self.progress["suite_elapsed_s"] = round(elapsed, 1)
            if total and done:
                # Remaining runs of this suite at the pace so far (later suites are not counted).
                self.progress["eta_s"] = round(elapsed / done * (total - done), 1)

    def snapshot(self) -> dict:
        """The latest progress (the database has it only as of the last beat)."""
        with self._lock:
            return dict(self.progress)

    def _log_tail(self) -> str:
        lines: list[str] = []
        for path in self.log_paths:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    lines.extend(line.rstrip()[:300] for line in deque(handle, maxlen=25))
            except OSError:
                continue
        return "\n".join(lines[-40:])

    def run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    self.beat()
                except DatabaseError:
                    logger.exception("Heartbeat of job %s could not reach the database.", self.job_id)
                    connection.close()
        finally:
            connection.close()

    def beat(self) -> None:
        with self._lock:
            progress = dict(self.progress)
        log_tail = self._log_tail()
        now = timezone.now()
        alive = EvaluationJob.objects.filter(pk=self.job_id, task_id=self.task_id, state=J.RUNNING).update(
            heartbeat_at=now, progress=progress, log_tail=log_tail
        )
        still_running = Submission.objects.filter(pk=self.submission_id, status=S.RUNNING).exists()
        if (not alive or not still_running) and not self.stop_requested.is_set():
            self.stop_requested.set()
            logger.info("Job %s was cancelled or taken over; stopping the engine.", self.job_id)
            interrupt_main_thread()
        WorkerHeartbeat.objects.filter(hostname=self.hostname).update(last_seen_at=now, current_job_id=self.job_id)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=self.interval + 5)


# ---------------------------------------------------------------------------------------------
# Running a job.


def _work_dir(job: EvaluationJob, role: str) -> Path:
    return Path(settings.EVALUATION_WORK_DIR) / f"job-{job.pk}" / role


def _model_dir(submission: Submission) -> Path:
    path = Path(submission.model_dir)
    return path if path.is_absolute() else Path(settings.MEDIA_ROOT) / path


def _base_model_dir(submission: Submission) -> Path | None:
    if submission.kind == Submission.Kind.ADAPTER and submission.base_model.weights_path:
        return Path(submission.base_model.weights_path)
    return None


def evaluation_run(*, job_id: int, task_id: str, hostname: str) -> None:
    job = EvaluationJob.objects.select_related("submission__track", "submission__base_model").get(pk=job_id)
    submission = job.submission
    heartbeat = JobHeartbeat(job_id=job.pk, submission_id=submission.pk, task_id=task_id, hostname=hostname)
    heartbeat.start()
    WorkerHeartbeat.objects.filter(hostname=hostname).update(current_job=job, last_seen_at=timezone.now())
    try:
        done_roles = set(SuiteResult.objects.filter(job=job).values_list("role", flat=True))
        suites = evaluation_suites()
        for role, suite in suites:
            if role in done_roles:
                continue  # finished before this job came back: not redone
            out_dir = _work_dir(job, role)
            shutil.rmtree(out_dir, ignore_errors=True)  # leftovers of an attempt that died
            heartbeat.start_suite(role=role, suite=suite, log_paths=engine_log_paths(out_dir))
            outcome = engine_run_suite(
                model_dir=_model_dir(submission),
                suite=suite,
                memory_gb=float(submission.track.gpu_memory_gb),
                out_dir=out_dir,
                on_progress=heartbeat.update,
                base_model_dir=_base_model_dir(submission),
            )
            if heartbeat.stop_requested.is_set():
                raise EvaluationStopped()
            _store_suite_result(job_id=job.pk, task_id=task_id, role=role, suite=suite, outcome=outcome)
        _finish_scored(
            job_id=job.pk, task_id=task_id, roles=[role for role, _ in suites], progress=heartbeat.snapshot()
        )
    except EvaluationStopped:
        logger.info("Job %s stopped: cancelled or taken over.", job.pk)
    except EngineUserError as exc:
        _finish_failed(job_id=job.pk, task_id=task_id, message=exc.message, log_tail=exc.log_tail)
    except EngineInfraError as exc:
        _infra_retry_or_fail(job_id=job.pk, task_id=task_id, message=exc.message, log_tail=exc.log_tail)
    finally:
        heartbeat.stop()
        WorkerHeartbeat.objects.filter(hostname=hostname, current_job_id=job.pk).update(current_job=None)
        shutil.rmtree(Path(settings.EVALUATION_WORK_DIR) / f"job-{job.pk}", ignore_errors=True)


def _lock_owned(job_id: int, task_id: str) -> EvaluationJob:
    """Lock the job and its submission; stop unless this worker still owns a running job."""
    job = EvaluationJob.objects.select_for_update().get(pk=job_id)
    status = Submission.objects.select_for_update().values_list("status", flat=True).get(pk=job.submission_id)
    if job.state != J.RUNNING or job.task_id != task_id or status != S.RUNNING:
        raise EvaluationStopped()
    return job


def _store_suite_result(*, job_id: int, task_id: str, role: str, suite: str, outcome: SuiteOutcome) -> SuiteResult:
    raw_name = ""
    if outcome.output_dir and outcome.output_dir.exists():
        # Archive first (outside the transaction); the name is stable so a repeat overwrites nothing else.
        local = archive_output(outcome.output_dir, outcome.output_dir.parent / f"{role}-helm-output.tar.gz")
        job = EvaluationJob.objects.only("submission_id").get(pk=job_id)
        with local.open("rb") as handle:
            raw_name = default_storage.save(
                f"private/helm-output/submission-{job.submission_id}/job-{job_id}-{role}.tar.gz", File(handle)
            )
    with transaction.atomic():
        job = _lock_owned(job_id, task_id)
        result, _ = SuiteResult.objects.update_or_create(
            job=job,
            role=role,
            defaults={
                "suite": suite,
                "runs": outcome.runs,
                "efficiency": outcome.efficiency,
                "hardware": outcome.hardware,
                "engine_version": outcome.engine_version,
                "helm_version": outcome.helm_version,
                "schema_version": outcome.schema_version,
                "raw_output_path": raw_name,
                "document": outcome.document,
                "finished_at": timezone.now(),
            },
        )
        MetricRecord.objects.bulk_create(
            [MetricRecord(suite_result=result, **record) for record in outcome.records],
            update_conflicts=True,
            unique_fields=["suite_result", "run", "metric", "split", "sub_split", "perturbation", "computed_on"],
            update_fields=["scenario", "value", "count"],
            batch_size=500,
        )
        job.engine_version = outcome.engine_version or job.engine_version
        job.helm_version = outcome.helm_version or job.helm_version
        job.save(update_fields=["engine_version", "helm_version"])
    return result


def _finish_scored(*, job_id: int, task_id: str, roles: list[str], progress: dict | None = None) -> None:
    """Done and scored; `progress`, the heartbeat's latest, replaces what its last beat stored (a
    suite's last runs often finish between two beats)."""
    with transaction.atomic():
        job = _lock_owned(job_id, task_id)
        missing = set(roles) - set(SuiteResult.objects.filter(job=job).values_list("role", flat=True))
        if missing:
            raise EngineInfraError(f"results of the {', '.join(sorted(missing))} suite are missing")
        job.state = J.DONE
        job.finished_at = timezone.now()
        job.progress = {**(job.progress if progress is None else progress), "finished": True}
        job.save(update_fields=["state", "finished_at", "progress"])
        submission_transition(submission_id=job.submission_id, to=S.SCORED, reason="Evaluation finished.")


def _fail_locked(job: EvaluationJob, *, reason: str, failure_kind: str, log_tail: str = "") -> None:
    job.state = J.FAILED
    job.finished_at = timezone.now()
    job.error = reason
    if log_tail:
        job.log_tail = log_tail[-8000:]
    job.save(update_fields=["state", "finished_at", "error", "log_tail", "worker_lost_count"])
    submission_transition(submission_id=job.submission_id, to=S.FAILED, reason=reason, failure_kind=failure_kind)


def _finish_failed(*, job_id: int, task_id: str, message: str, log_tail: str = "") -> None:
    try:
        with transaction.atomic():
            job = _lock_owned(job_id, task_id)
            _fail_locked(job, reason=message, failure_kind=Submission.FailureKind.USER, log_tail=log_tail)
    except EvaluationStopped:
        pass


def _infra_retry_or_fail(*, job_id: int, task_id: str, message: str, log_tail: str = "") -> None:
    try:
        with transaction.atomic():
            job = _lock_owned(job_id, task_id)
            if job.attempts >= settings.EVALUATION_MAX_INFRA_ATTEMPTS:
                _fail_locked(
                    job,
                    reason=INFRA_FAILED_REASON.format(attempts=job.attempts, message=message),
                    failure_kind=Submission.FailureKind.INFRA,
                    log_tail=log_tail,
                )
                return
            requeue_locked(job, reason=INFRA_RETRY_REASON.format(message=message), backoff=True, error=message)
    except EvaluationStopped:
        pass


def requeue_locked(job: EvaluationJob, *, reason: str, backoff: bool = False, error: str = "", actor=None) -> None:
    """Put a locked running job back in its queue, keeping the suites it finished."""
    delay = settings.EVALUATION_RETRY_BACKOFF_SECONDS * (2 ** max(0, job.attempts - 1)) if backoff else 0
    job.state = J.PENDING
    job.task_id = ""
    job.retry_at = timezone.now() + timedelta(seconds=delay) if delay else None
    job.error = error
    job.save(update_fields=["state", "task_id", "retry_at", "error", "worker_lost_count"])
    # The → QUEUED listener sends the slot message, delayed until retry_at.
    submission_transition(submission_id=job.submission_id, to=S.QUEUED, reason=reason, actor=actor)


# ---------------------------------------------------------------------------------------------
# The reaper (beat): jobs whose heartbeat went stale.


def evaluation_reap_stale_jobs(*, batch: int | None = None) -> dict[str, int]:
    """Requeue (or fail, after too many losses) running jobs whose worker stopped beating."""
    batch = batch or settings.EVALUATION_REAP_BATCH
    cutoff = timezone.now() - timedelta(seconds=settings.EVALUATION_STALE_AFTER_SECONDS)
    stale_ids = list(
        EvaluationJob.objects.filter(state=J.RUNNING, heartbeat_at__lt=cutoff).values_list("id", flat=True)[:batch]
    )
    counts = {"requeued": 0, "failed": 0}
    for job_id in stale_ids:
        with transaction.atomic():
            qs = EvaluationJob.objects.filter(pk=job_id, state=J.RUNNING, heartbeat_at__lt=cutoff)
            if connection.features.has_select_for_update_skip_locked:
                qs = qs.select_for_update(skip_locked=True)
            else:
                qs = qs.select_for_update()
            job = qs.first()
            if job is None:
                continue
            job.worker_lost_count += 1
            if job.worker_lost_count >= settings.EVALUATION_MAX_WORKER_LOSSES:
                _fail_locked(
                    job,
                    reason=WORKER_LOST_REASON.format(count=job.worker_lost_count),
                    failure_kind=Submission.FailureKind.USER,
                )
                counts["failed"] += 1
            else:
                requeue_locked(job, reason="The worker running it stopped responding; it was put back in the queue.")
                counts["requeued"] += 1
            # The silent worker is no longer running it (the queue page said so until it was gone).
            WorkerHeartbeat.objects.filter(current_job_id=job_id).update(current_job=None)
    # Workers silent for a day are gone for good.
    WorkerHeartbeat.objects.filter(last_seen_at__lt=timezone.now() - timedelta(days=1)).delete()
    return counts


def worker_heartbeat_record(*, hostname: str, queues: list[str], gpu: str, starting: bool = False) -> None:
    defaults = {"queues": ",".join(queues), "gpu": gpu, "last_seen_at": timezone.now()}
    if starting:
        defaults.update(started_at=timezone.now(), current_job=None)
    WorkerHeartbeat.objects.update_or_create(hostname=hostname, defaults=defaults)


def worker_heartbeat_forget(*, hostname: str) -> None:
    WorkerHeartbeat.objects.filter(hostname=hostname).delete()
    close_old_connections()
