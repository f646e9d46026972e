"""The analysis of one submission: its aspects against the track's median and frontier, its
per-scenario table, its efficiency, and (for its team and organizers only) the private parts."""

import statistics
from typing import Any

from django.urls import NoReverseMatch, reverse

from evaluation.models import Submission
from portal.errors import NotFound
from portal.models import Track

from ..columns import ASPECT_LABELS, COMPUTE_COLUMNS
from ..models import ASPECT_NAMES, Standing
from .board import Viewer, breakdown_rows, snapshot_current, standing_row


def _drop(values: dict[str, float], aspect: str) -> float | None:
    """How much the main metric falls under a perturbation (worst case), in raw metric points."""
    base, perturbed = values.get("accuracy"), values.get(aspect)
    if base is None or perturbed is None:
        return None
    return base - perturbed


def scenario_table(standing: Standing, suite: str, *, scenario_names: bool = True) -> list[dict[str, Any]]:
    rows = []
    for row in breakdown_rows(standing, suite, scenario_names=scenario_names):
        values = row["values"]
        rows.append(
            {
                **row,
                "accuracy_value": values.get("accuracy"),
                "robustness_value": values.get("robustness"),
                "fairness_value": values.get("fairness"),
                "robustness_drop": _drop(values, "robustness"),
                "fairness_drop": _drop(values, "fairness"),
            }
        )
    return rows


def _frontier_at(points: list[tuple[float | None, float | None]], x: float | None) -> float | None:
    """The best score reached with no more compute than `x`: the frontier's height at x."""
    if x is None:
        return None
    ys = [py for px, py in points if px is not None and py is not None and px <= x]
    return max(ys) if ys else None


def submission_analysis(*, track: Track, submission_id: int, viewer: Viewer) -> dict[str, Any]:
    """Everything the analysis page shows to this viewer. NotFound when the submission has no
    stored standing the viewer may see (a disqualified one is visible to its team and organizers)."""
    submission = (
        Submission.objects.select_related("team", "base_model", "track").filter(pk=submission_id, track=track).first()
    )
    if submission is None:
        raise NotFound("No such submission on this leaderboard.")
    private = viewer.organizer or submission.team_id in viewer.team_ids
    snapshot = snapshot_current(track)
    standing = None
    if snapshot is not None:
        standing = Standing.objects.select_related("team").filter(snapshot=snapshot, submission=submission).first()
    disqualified = submission.status == Submission.Status.DISQUALIFIED
    if standing is None and not (private and disqualified):
        raise NotFound("No such submission on this leaderboard.")

    hidden_public = viewer.hidden_visible
    # Its own team may see its hidden-suite numbers (never the hidden scenario names).
    hidden_numbers = hidden_public or private
    data: dict[str, Any] = {
        "track": track,
        "submission": submission,
        "standing": standing,
        "private": private,
        "disqualified": disqualified,
        "disqualified_reason": submission.status_reason if disqualified and private else "",
        "hidden_visible": hidden_public,
        "hidden_numbers": hidden_numbers,
        "snapshot": snapshot,
    }
    if standing is None:
        return data

    data["row"] = standing_row(standing, track=track, viewer=viewer, suite="open", breakdown=False)
    data["row"]["rank_if_entry"] = standing.rank_if_entry if hidden_public else None
    data["row"]["is_team_entry"] = standing.is_team_entry
    suites = ["open", "hidden"] if hidden_numbers else ["open"]
    rank_field = "rank" if hidden_public else "open_rank"
    # Other teams' hidden-suite numbers, even as a median, stay out until the reveal.
    compared = ["open", "hidden"] if hidden_public else ["open"]
    fields = [f"{s}_{a}" for s in compared for a in ASPECT_NAMES] + ["eval_gpu_seconds"]
    field_rows = list(
        Standing.objects.filter(snapshot=snapshot, is_team_entry=True, **{f"{rank_field}__isnull": False}).values_list(
            *fields
        )
    )
    columns = {name: [r[i] for r in field_rows] for i, name in enumerate(fields)}
    comparison = []
    for suite in suites:
        for aspect in ASPECT_NAMES:
            name = f"{suite}_{aspect}"
            present = [v for v in columns.get(name, []) if v is not None]
            comparison.append(
                {
                    "suite": suite,
                    "aspect": aspect,
                    "label": ASPECT_LABELS[aspect],
                    "value": getattr(standing, name),
                    "median": statistics.median(present) if present else None,
                    "best": max(present) if present else None,
                    "frontier": _frontier_at(
                        list(zip(columns["eval_gpu_seconds"], columns[name], strict=True)), standing.eval_gpu_seconds
                    )
                    if name in columns
                    else None,
                }
            )
    data["comparison"] = comparison
    data["entries"] = len(field_rows)
    data["scenarios"] = {"open": scenario_table(standing, "open")}
    if hidden_numbers and (viewer.organizer or private):
        data["scenarios"]["hidden"] = scenario_table(standing, "hidden", scenario_names=viewer.organizer)
    data["efficiency"] = [
        {"label": c.label, "key": c.key, "value": getattr(standing, c.field), "help": c.help} for c in COMPUTE_COLUMNS
    ]
    data["runtime"] = {
        suite: ((standing.breakdown or {}).get(suite, {}).get("scenarios", {}).get("runtime") or {}).get("values", {})
        for suite in suites
    }
    if private:
        data.update(_private_parts(submission, organizer=viewer.organizer))
    return data


def _private_parts(submission: Submission, *, organizer: bool) -> dict[str, Any]:
    """The evaluation's log tail and versions, redacted of hidden-suite lines for participants."""
    parts: dict[str, Any] = {"log_tail": "", "log_redacted": False, "job": None, "submission_url": None}
    try:
        parts["submission_url"] = reverse("submission_detail", args=[submission.pk])
    except NoReverseMatch:
        pass
    try:
        from evaluation.selectors import submission_progress
    except ImportError:  # the pipeline is not installed
        return parts
    progress = submission_progress(submission=submission, show_hidden=organizer)
    parts["log_tail"] = progress.get("log_tail") or ""
    parts["log_redacted"] = progress.get("hidden_redacted", False)
    parts["job"] = progress.get("job")
    return parts
