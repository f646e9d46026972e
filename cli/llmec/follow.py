"""Follow a submission until it ends, printing what changes: status, queue position, progress, scores."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from llmec.api import ApiError, Client

TERMINAL = {"scored", "failed", "cancelled", "disqualified"}
ASPECTS = ("accuracy", "robustness", "fairness", "bias", "efficiency")


def describe(submission: dict) -> str:
    """One line for the submission's current state."""
    status = submission.get("status", "?")
    parts = [f"#{submission.get('id')} {status}"]
    queue = submission.get("queue") or {}
    if status == "queued" and queue.get("position") is not None:
        parts.append(f"position {queue['position']} in the {submission.get('track', '')} queue".replace("  ", " "))
        if queue.get("estimated_start"):
            parts.append(f"estimated start {queue['estimated_start']}")
    progress = submission.get("progress") or {}
    if status == "running" and progress:
        if progress.get("runs_total"):
            parts.append(f"{progress.get('runs_done', 0)}/{progress['runs_total']} runs")
        if progress.get("current_scenario"):
            parts.append(f"now: {progress['current_scenario']}")
        if progress.get("eta_seconds") is not None:
            parts.append(f"about {int(progress['eta_seconds']) // 60} min left")
    if submission.get("status_reason") and status in TERMINAL | {"validating"}:
        parts.append(submission["status_reason"])
    return " · ".join(parts)


def format_scores(submission: dict) -> str:
    scores = submission.get("scores") or {}
    if not scores:
        return "No scores yet."
    lines = [f"  {name:<11} {_number(scores.get(name))}" for name in ASPECTS]
    lines.append(f"  {'final':<11} {_number(scores.get('final'))}")
    if scores.get("rank"):
        lines.append(f"  {'rank':<11} {scores['rank']}")
    if scores.get("provisional"):
        lines.append("  (provisional: hidden-suite results are not public yet)")
    return "\n".join(lines)


def _number(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def follow(
    client: Client,
    submission_id: int,
    *,
    interval: float = 5.0,
    stop_at: set[str] | None = None,
    out=None,
    sleep: Callable[[float], None] = time.sleep,
    max_polls: int | None = None,
) -> dict:
    """Poll until the submission reaches a status in `stop_at` (default: a terminal one); return it.

    Connection problems while following are reported and retried: the evaluation goes on server-side.
    """
    out = out or sys.stdout
    stop_at = stop_at or TERMINAL
    last_line = None
    last_log = None
    polls = 0
    failures = 0
    while True:
        try:
            submission = client.get(f"submissions/{submission_id}/")
            failures = 0
        except ApiError as error:
            if error.status and error.status < 500:
                raise
            failures += 1
            if failures > 20:
                raise
            print(f"({error}; retrying)", file=sys.stderr, flush=True)
            sleep(min(interval * failures, 60))
            continue
        line = describe(submission)
        if line != last_line:
            print(line, file=out, flush=True)
            last_line = line
        log_tail = submission.get("log_tail") or ""
        if isinstance(log_tail, list):
            log_tail = "\n".join(log_tail)
        if log_tail and log_tail != last_log and submission.get("status") == "running":
            new = log_tail if last_log is None else log_tail.removeprefix(last_log)
            last_log = log_tail
            last_new = new.strip().splitlines()[-1:] if new.strip() else []
            for text in last_new:
                print(f"    │ {text}", file=out, flush=True)
        if submission.get("status") in stop_at:
            return submission
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return submission
        sleep(interval)
