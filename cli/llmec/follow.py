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
        if progress.get("suite_role"):
            parts.append(f"{progress['suite_role']} suite")
        if progress.get("runs_total"):
            parts.append(f"{progress.get('runs_done') or 0}/{progress['runs_total']} runs")
        if progress.get("current_run"):
            parts.append(f"now: {progress['current_run']}")
        if progress.get("eta_s") is not None:
            parts.append(f"about {max(1, round(progress['eta_s'] / 60))} min left")
    if submission.get("status_reason") and status in TERMINAL | {"validating"}:
        parts.append(submission["status_reason"])
    return " · ".join(parts)


def format_scores(submission: dict) -> str:
    """The five aspect scores per suite, and the final score (once hidden results are visible)."""
    scores = submission.get("scores") or {}
    if not scores:
        return "  Scored; the track's standings are being recomputed (try `llmec status ID` in a minute)."
    suites = [("open", scores.get("open") or {})]
    if scores.get("hidden"):
        suites.append(("hidden", scores["hidden"]))
    lines = [f"  {'aspect':<11} " + " ".join(f"{name:>8}" for name, _ in suites)]
    for aspect in ASPECTS:
        lines.append(f"  {aspect:<11} " + " ".join(f"{_number(values.get(aspect)):>8}" for _, values in suites))
    lines.append(
        f"  {'suite score':<11} {_number(scores.get('open_score')):>8}"
        + (f" {_number(scores.get('hidden_score')):>8}" if scores.get("hidden") else "")
    )
    if scores.get("final") is not None:
        lines.append(
            f"  final score {_number(scores['final'])}" + (f"  (rank {scores['rank']})" if scores.get("rank") else "")
        )
    else:
        lines.append("  final score — (hidden-suite results are not revealed yet)")
    if scores.get("provisional"):
        lines.append("  Provisional until the organizers finalize the track.")
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


def await_scores(
    client: Client,
    submission: dict,
    *,
    interval: float = 5.0,
    patience_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """A submission that just became "scored" gets its scores once the track's standings are recomputed
    (a moment later, on the server's CPU worker): wait for them, at most `patience_s`."""
    waited = 0.0
    while submission.get("status") == "scored" and not submission.get("scores") and waited < patience_s:
        step = max(0.2, min(interval, 5.0))
        sleep(step)
        waited += step
        submission = client.get(f"submissions/{submission['id']}/")
    return submission
