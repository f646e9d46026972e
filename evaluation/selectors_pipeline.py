"""Reads of the evaluation pipeline: stored results for scoring, a team's live progress, the queue page."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from evaluation.models import EvaluationJob, MetricRecord, Submission, SuiteResult, WorkerHeartbeat
from evaluation.services.queueing import queue_estimates

S = Submission.Status
J = EvaluationJob.State

NULLABLE_KEY_FIELDS = ("split", "sub_split", "perturbation", "computed_on")
RECORD_FIELDS = ("run", "scenario", "metric", "split", "sub_split", "perturbation", "computed_on", "value", "count")


def scored_results_for_track(track_id: int) -> list[dict]:
    """Every scored submission of the track with its stored results, in four queries.

    [{submission_id, team_id, created_at, is_team_entry,
      suites: {"open"|"hidden": {"suite", "runs", "records", "efficiency"}}}]
    A team's entry is the submission it marked final, else its most recent scored one.
    """
    submissions = list(
        Submission.objects.filter(track_id=track_id, status=S.SCORED)
        .order_by("created_at", "id")
        .values("id", "team_id", "created_at", "is_final")
    )
    if not submissions:
        return []
    ids = [s["id"] for s in submissions]
    latest_job: dict[int, int] = {}
    for job_id, submission_id in (
        EvaluationJob.objects.filter(submission_id__in=ids, state=J.DONE)
        .order_by("submission_id", "finished_at", "id")
        .values_list("id", "submission_id")
    ):
        latest_job[submission_id] = job_id  # the last one wins
    suites: dict[int, dict] = defaultdict(dict)
    result_owner: dict[int, tuple[int, str]] = {}
    job_to_sub = {job_id: submission_id for submission_id, job_id in latest_job.items()}
    for result in SuiteResult.objects.filter(job_id__in=latest_job.values()).values(
        "id", "job_id", "role", "suite", "runs", "efficiency"
    ):
        submission_id = job_to_sub[result["job_id"]]
        suites[submission_id][result["role"]] = {
            "suite": result["suite"],
            "runs": result["runs"],
            "records": [],
            "efficiency": result["efficiency"],
        }
        result_owner[result["id"]] = (submission_id, result["role"])
    for record in MetricRecord.objects.filter(suite_result_id__in=result_owner).values(
        "suite_result_id", *RECORD_FIELDS
    ):
        submission_id, role = result_owner[record.pop("suite_result_id")]
        for key in NULLABLE_KEY_FIELDS:  # stored as "" for the unique key; the engine's None again
            record[key] = record[key] or None
        suites[submission_id][role]["records"].append(record)

    finals = {s["team_id"]: s["id"] for s in submissions if s["is_final"]}
    latest = {s["team_id"]: s["id"] for s in submissions}  # ordered oldest first: the last one wins
    entry = {team: finals.get(team, submission_id) for team, submission_id in latest.items()}
    return [
        {
            "submission_id": s["id"],
            "team_id": s["team_id"],
            "created_at": s["created_at"],
            "is_team_entry": entry.get(s["team_id"]) == s["id"],
            "suites": suites.get(s["id"], {}),
        }
        for s in submissions
    ]


def latest_job_for_submission(submission_id: int) -> EvaluationJob | None:
    return EvaluationJob.objects.filter(submission_id=submission_id).order_by("-created_at", "-id").first()


def submission_progress(*, submission: Submission, show_hidden: bool) -> dict:
    """What the live view shows. `show_hidden` is for organizers only: participants never see the
    hidden suite's scenario names, prompts or log lines.
    """
    job = latest_job_for_submission(submission.pk)
    data: dict = {
        "submission": submission,
        "status": submission.status,
        "status_label": submission.get_status_display(),
        "status_reason": submission.status_reason,
        "failure_kind": submission.failure_kind,
        "is_active": submission.status in (S.QUEUED, S.RUNNING),
        "job": job,
        "queue": None,
        "suite_role": None,
        "runs_done": None,
        "runs_total": None,
        "current_run": None,
        "instances_done": None,
        "instances_total": None,
        "elapsed_s": None,
        "eta_s": None,
        "log_tail": "",
        "hidden_redacted": False,
        "percent": None,
        "suites_done": [],
    }
    if submission.status == S.QUEUED:
        estimate = queue_estimates(submission.track_id, submission.track.queue_name).get(submission.pk)
        data["queue"] = estimate
        if job and job.retry_at and job.retry_at > timezone.now():
            data["retry_at"] = job.retry_at
    if job is None:
        return data
    data["suites_done"] = list(SuiteResult.objects.filter(job=job).values_list("role", flat=True))
    progress = job.progress or {}
    role = progress.get("suite_role")
    data["suite_role"] = role
    for key in ("runs_done", "runs_total", "instances_done", "instances_total", "eta_s"):
        data[key] = progress.get(key)
    if job.state == J.RUNNING and job.started_at:
        data["elapsed_s"] = int((timezone.now() - job.started_at).total_seconds())
    elif job.duration_s is not None:
        data["elapsed_s"] = int(job.duration_s)
    if role == "hidden" and not show_hidden:
        data["hidden_redacted"] = True
    else:
        data["current_run"] = progress.get("current_run") or progress.get("run")
        data["log_tail"] = job.log_tail
    if data["runs_total"]:
        data["percent"] = int(100 * (data["runs_done"] or 0) / data["runs_total"])
    return data


def evaluation_queue_overview() -> dict:
    """The organizers' queue page: workers, queue lengths per track, recent failures."""
    from portal.models import Track

    now = timezone.now()
    alive_cutoff = now - timedelta(seconds=max(3 * settings.EVALUATION_HEARTBEAT_SECONDS, 60))
    workers = []
    for worker in WorkerHeartbeat.objects.select_related("current_job__submission__team").order_by("hostname"):
        workers.append({"worker": worker, "alive": worker.last_seen_at >= alive_cutoff})
    counts = defaultdict(dict)
    for row in (
        Submission.objects.filter(status__in=[S.QUEUED, S.RUNNING]).values("track_id", "status").annotate(n=Count("id"))
    ):
        counts[row["track_id"]][row["status"]] = row["n"]
    tracks = [
        {
            "track": track,
            "queue_name": track.queue_name,
            "queued": counts[track.pk].get(S.QUEUED, 0),
            "running": counts[track.pk].get(S.RUNNING, 0),
        }
        for track in Track.objects.select_related("challenge").order_by("challenge", "order", "id")
    ]
    failures = (
        Submission.objects.filter(status=S.FAILED).select_related("team", "track").order_by("-status_changed_at")[:25]
    )
    running = (
        EvaluationJob.objects.filter(state=J.RUNNING)
        .select_related("submission__team", "submission__track")
        .order_by("started_at")
    )
    return {"workers": workers, "tracks": tracks, "failures": failures, "running": running, "now": now}
