"""Celery tasks of evaluation/: thin, they take ids and call one service."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading

from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from django.db import InterfaceError, OperationalError

from evaluation.models import Submission
from evaluation.services.transitions import submission_transition
from evaluation.services.uploads import uploads_expire
from evaluation.services.validation import submission_validate
from portal.models import GPU_QUEUE_PREFIX

logger = logging.getLogger(__name__)

VALIDATION_RETRIES = 3


@shared_task(
    bind=True, name="evaluation.submission_validate", queue="cpu", acks_late=True, max_retries=VALIDATION_RETRIES
)
def submission_validate_task(self, submission_id: int) -> None:
    try:
        submission_validate(submission_id=submission_id)
    except Exception as exc:
        if self.request.retries < VALIDATION_RETRIES and not self.request.is_eager:
            raise self.retry(exc=exc, countdown=30 * 2**self.request.retries)
        logger.exception("validation of submission %s failed for a reason of ours", submission_id)
        if not Submission.objects.filter(pk=submission_id, status=Submission.Status.VALIDATING).exists():
            return
        submission_transition(
            submission_id=submission_id,
            to=Submission.Status.FAILED,
            failure_kind=Submission.FailureKind.INFRA,
            reason="The validator hit an internal error; organizers were notified. This does not count against your quota.",
        )


@shared_task(name="evaluation.uploads_expire", queue="cpu")
def uploads_expire_task() -> int:
    return uploads_expire()


# ---------------------------------------------------------------------------------------------
# The evaluation pipeline (issue 5).


@shared_task(
    bind=True,
    name="evaluation.tasks.submission_evaluate",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=5,
)
def submission_evaluate(self, track_id: int) -> int | None:
    """A slot is free on the track's GPU queue: claim the next submission in round-robin order and run it."""
    from evaluation.services import evaluation_process_slot

    return evaluation_process_slot(
        track_id=track_id,
        task_id=self.request.id or "",
        hostname=self.request.hostname or socket.gethostname(),
        is_retry=bool(self.request.retries),
    )


@shared_task(name="evaluation.tasks.evaluation_reap_stale_jobs")
def evaluation_reap_stale_jobs() -> dict:
    from evaluation.services import evaluation_reap_stale_jobs as reap

    return reap()


@shared_task(name="evaluation.tasks.submission_notify", autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def submission_notify(submission_id: int) -> int:
    from evaluation.services import submission_notify as notify

    return notify(submission_id=submission_id)


# ---------------------------------------------------------------------------------------------
# Workers announce themselves for the organizers' queue page.

_beat_stop = threading.Event()


def _gpu_name() -> str:
    if os.environ.get("EVALUATION_WORKER_GPU"):
        return os.environ["EVALUATION_WORKER_GPU"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return "; ".join(line.strip() for line in out.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return "CPU only"


@worker_ready.connect
def _announce_worker(sender=None, **kwargs) -> None:
    from django.conf import settings

    from evaluation.services.jobs import worker_heartbeat_record

    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    except AttributeError:
        queues = []
    gpu = _gpu_name()
    worker_heartbeat_record(hostname=hostname, queues=queues, gpu=gpu, starting=True)
    # A prefork worker runs tasks in its children (worker_process_init starts theirs); the solo pool
    # runs them in this thread, which the standbys must be children of.
    if not type(getattr(sender, "pool", None)).__module__.endswith("prefork"):
        _start_standbys(queues)

    def beat() -> None:
        from django.db import connection

        while not _beat_stop.wait(settings.EVALUATION_HEARTBEAT_SECONDS):
            try:
                worker_heartbeat_record(hostname=hostname, queues=queues, gpu=gpu)
            except Exception:
                logger.exception("Worker heartbeat failed")
                connection.close()

    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()


@worker_process_init.connect
def _prepare_pool_process(**kwargs) -> None:
    from celery import current_app

    _start_standbys(list(current_app.amqp.queues.consume_from))


def _start_standbys(queues: list[str]) -> None:
    """A GPU worker's first evaluation need not wait for torch, transformers and HELM to import:
    start the standby processes now, as every evaluation does for the next one."""
    from django.conf import settings

    if not settings.EVALUATION_STANDBY or not any(q.startswith(GPU_QUEUE_PREFIX) for q in queues):
        return
    from evaluation.engine import runner

    try:
        runner.start_standbys(runner.helm_process_count(settings.EVALUATION_HELM_PROCESSES))
    except OSError:
        logger.exception("Could not start standby processes; evaluations start theirs from scratch")


@worker_shutdown.connect
def _forget_worker(sender=None, **kwargs) -> None:
    from evaluation.services.jobs import worker_heartbeat_forget

    _beat_stop.set()
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        worker_heartbeat_forget(hostname=hostname)
    except Exception:
        logger.exception("Could not remove the worker's heartbeat row")
