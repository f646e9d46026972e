"""Fair order within a track's GPU queue.

A broker queue is FIFO, and teams must take turns. So a message on `gpu-<track>` only means "a
slot is free on this track"; the worker that takes it claims the next submission from the database
in round-robin order: organizer priority first, then the team that started least recently, then
the oldest queued submission of that team.
"""

from __future__ import annotations

import heapq
import logging
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from evaluation.models import EvaluationJob, Submission, WorkerHeartbeat
from evaluation.services.transitions import on_transition, submission_transition

logger = logging.getLogger(__name__)
S = Submission.Status
J = EvaluationJob.State


def current_job(submission_id: int) -> EvaluationJob | None:
    """The job of the submission's current evaluation round (pending or running), if any."""
    return (
        EvaluationJob.objects.filter(submission_id=submission_id, state__in=[J.PENDING, J.RUNNING])
        .order_by("-created_at", "-id")
        .first()
    )


def job_pending_get_or_create(submission_id: int) -> EvaluationJob:
    job = current_job(submission_id)
    if job is None:
        job = EvaluationJob.objects.create(submission_id=submission_id)
    return job


def evaluation_enqueue(*, submission_id: int) -> None:
    """Make sure a job row exists, then send one "slot on this track" message (after commit)."""
    from evaluation.tasks import submission_evaluate as submission_evaluate_task

    submission = Submission.objects.select_related("track").get(pk=submission_id)
    if submission.status != S.QUEUED:
        return
    job = job_pending_get_or_create(submission_id)
    countdown = 0.0
    if job.retry_at:
        countdown = max(0.0, (job.retry_at - timezone.now()).total_seconds())
    options = {"queue": submission.track.queue_name, "countdown": countdown}
    limit = evaluation_time_limit_s()
    if limit:
        options["time_limit"] = limit
    transaction.on_commit(
        lambda: submission_evaluate_task.apply_async(kwargs={"track_id": submission.track_id}, **options)
    )


def evaluation_time_limit_s() -> int | None:
    """Hard Celery limit for one job: the suites' own limits plus a margin for loading and storing."""
    from evaluation.services.engine import evaluation_suites, suite_time_limit_s

    limits = [suite_time_limit_s(name) for _, name in evaluation_suites()]
    if not limits or any(limit is None for limit in limits):
        return None
    return int(sum(limits) + 600)


@on_transition
def _enqueue_when_queued(submission_id: int, from_status: str, to_status: str) -> None:
    if to_status == S.QUEUED:
        evaluation_enqueue(submission_id=submission_id)


# ---------------------------------------------------------------------------------------------
# Round robin.


@dataclass
class QueuedEntry:
    submission_id: int
    team_id: int
    priority: int
    queued_at: datetime
    retry_at: datetime | None


def _queued_entries(track_id: int) -> list[QueuedEntry]:
    rows = list(
        Submission.objects.filter(track_id=track_id, status=S.QUEUED).values_list(
            "id", "team_id", "priority", "status_changed_at"
        )
    )
    retry = dict(
        EvaluationJob.objects.filter(
            submission_id__in=[row[0] for row in rows], state=J.PENDING, retry_at__isnull=False
        ).values_list("submission_id", "retry_at")
    )
    return [QueuedEntry(sid, team, prio, queued, retry.get(sid)) for sid, team, prio, queued in rows]


def _team_last_started(track_id: int) -> dict[int, datetime]:
    return dict(
        EvaluationJob.objects.filter(submission__track_id=track_id, started_at__isnull=False)
        .values_list("submission__team_id")
        .annotate(last=Max("started_at"))
        .values_list("submission__team_id", "last")
    )


def round_robin_order(entries: list[QueuedEntry], last_started: dict[int, datetime]) -> list[QueuedEntry]:
    """The order in which workers will take `entries`: priority, then teams in turns.

    Within a priority level, the team whose last evaluation started longest ago (or never) goes
    first; once it is served it goes to the back of the round.
    """
    ordered: list[QueuedEntry] = []
    for priority in sorted({e.priority for e in entries}, reverse=True):
        per_team: dict[int, list[QueuedEntry]] = {}
        level = sorted((e for e in entries if e.priority == priority), key=lambda e: (e.queued_at, e.submission_id))
        for entry in level:
            per_team.setdefault(entry.team_id, []).append(entry)
        # Keys: (0, never started) < (1, last start) < (2, turn served in this simulation).
        heap = []
        for team, items in per_team.items():
            started = last_started.get(team)
            first = (0, 0.0) if started is None else (1, started.timestamp())
            heap.append((first, items[0].queued_at, items[0].submission_id, team))
        heapq.heapify(heap)
        turn = 0
        while heap:
            _, _, _, team = heapq.heappop(heap)
            items = per_team[team]
            ordered.append(items.pop(0))
            if items:
                turn += 1
                heapq.heappush(heap, ((2, float(turn)), items[0].queued_at, items[0].submission_id, team))
    return ordered


def queue_order(track_id: int, *, eligible_only: bool = False) -> list[QueuedEntry]:
    now = timezone.now()
    entries = _queued_entries(track_id)
    if eligible_only:
        entries = [e for e in entries if e.retry_at is None or e.retry_at <= now]
    return round_robin_order(entries, _team_last_started(track_id))


# ---------------------------------------------------------------------------------------------
# Claiming.


def _lock_queued(submission_id: int) -> Submission | None:
    qs = Submission.objects.filter(pk=submission_id, status=S.QUEUED)
    if connection.features.has_select_for_update_skip_locked:
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    else:
        qs = qs.select_for_update()
    return qs.first()


def evaluation_claim_next(*, track_id: int, task_id: str, hostname: str) -> EvaluationJob | None:
    """Claim the next submission of the track for this worker, or None when nothing waits."""
    for entry in queue_order(track_id, eligible_only=True):
        with transaction.atomic():
            submission = _lock_queued(entry.submission_id)
            if submission is None:
                continue  # another worker took it, or it was cancelled meanwhile
            job = job_pending_get_or_create(submission.pk)
            now = timezone.now()
            job.state = J.RUNNING
            job.attempts += 1
            job.task_id = task_id
            job.worker_hostname = hostname
            job.heartbeat_at = now
            job.started_at = now
            job.retry_at = None
            job.error = ""
            job.save()
            submission_transition(
                submission_id=submission.pk, to=S.RUNNING, reason=f"Evaluation started on {hostname}."
            )
            return job
    return None


# ---------------------------------------------------------------------------------------------
# Position and estimated start for waiting teams.


def recent_job_duration_s(track_id: int, sample: int = 20) -> float | None:
    jobs = EvaluationJob.objects.filter(
        submission__track_id=track_id, state=J.DONE, started_at__isnull=False, finished_at__isnull=False
    ).order_by("-finished_at")[:sample]
    durations = [job.duration_s for job in jobs if job.duration_s is not None]
    return statistics.median(durations) if durations else None


def alive_worker_count(queue_name: str) -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.EVALUATION_STALE_AFTER_SECONDS)
    return sum(
        1
        for queues in WorkerHeartbeat.objects.filter(last_seen_at__gte=cutoff).values_list("queues", flat=True)
        if queue_name in queues.split(",")
    )


def queue_estimates(track_id: int, queue_name: str) -> dict[int, dict]:
    """{submission_id: {"position": 1-based, "estimated_start": datetime | None}} for the queued ones."""
    now = timezone.now()
    order = queue_order(track_id)
    duration = recent_job_duration_s(track_id)
    running = list(
        EvaluationJob.objects.filter(submission__track_id=track_id, state=J.RUNNING).values_list(
            "started_at", flat=True
        )
    )
    slots = max(1, alive_worker_count(queue_name), len(running))
    estimates: dict[int, dict] = {}
    if duration is None:
        return {e.submission_id: {"position": i + 1, "estimated_start": None} for i, e in enumerate(order)}
    # Simulate the slots: each frees up when its job is expected to end.
    free_at = [max(0.0, duration - (now - (started or now)).total_seconds()) for started in running]
    free_at += [0.0] * (slots - len(free_at))
    heapq.heapify(free_at)
    for i, entry in enumerate(order):
        start = heapq.heappop(free_at)
        if entry.retry_at:
            start = max(start, (entry.retry_at - now).total_seconds())
        estimates[entry.submission_id] = {"position": i + 1, "estimated_start": now + timedelta(seconds=start)}
        heapq.heappush(free_at, start + duration)
    return estimates
