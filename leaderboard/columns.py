"""The leaderboard's columns, sort keys and Pareto axes: one table that the page, its JSON, the
exports and the API share, so a column means the same thing everywhere.

Sorting is whitelisted: only keys listed here reach `order_by`, and keys that need the hidden suite
are refused while it is not visible to the viewer (sorting by them would leak its order).
"""

from dataclasses import dataclass

from .models import ASPECT_NAMES


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    field: str  # Standing field (or lookup) sorted on
    descending: bool  # the natural direction: best first
    hidden: bool = False  # needs the hidden suite to be visible
    help: str = ""


ASPECT_LABELS = {
    "accuracy": "Accuracy",
    "robustness": "Robustness",
    "fairness": "Fairness",
    "bias": "Bias",
    "efficiency": "Efficiency",
}

COMPUTE_COLUMNS = [
    Column("finetune_gpu_hours", "Fine-tune GPU-h", "finetune_gpu_hours", False, help="Declared by the team"),
    Column("eval_gpu_seconds", "Eval GPU-s", "eval_gpu_seconds", False, help="Measured by the evaluation engine"),
    Column("peak_gpu_memory_bytes", "Peak memory", "peak_gpu_memory_bytes", False, help="Peak GPU memory"),
    Column("parameter_count", "Parameters", "parameter_count", False),
    Column("output_tokens_per_second", "Tokens/s", "output_tokens_per_second", True, help="Output tokens per second"),
]


def sort_columns(*, hidden_visible: bool, suite: str) -> dict[str, Column]:
    """The columns one may sort by. `score`/`rank` mean the final ones when the hidden suite is
    visible, the open-suite ones otherwise."""
    columns = [
        Column("rank", "Rank", "rank" if hidden_visible else "open_rank", False),
        Column("team", "Team", "team__name", False),
        Column(
            "score",
            "Final" if hidden_visible else "Open score",
            "final_score" if hidden_visible else "open_score",
            True,
        ),
        Column("open_score", "Open", "open_score", True),
        Column("hidden_score", "Hidden", "hidden_score", True, hidden=True),
    ]
    columns += [Column(a, ASPECT_LABELS[a], f"{suite}_{a}", True, hidden=suite == "hidden") for a in ASPECT_NAMES]
    columns += COMPUTE_COLUMNS
    columns += [
        Column("base_model", "Base model", "base_model_name", False),
        Column("date", "Date", "submitted_at", False),
    ]
    return {c.key: c for c in columns if hidden_visible or not c.hidden}


PARETO_X = {
    "eval_gpu_seconds": "Evaluation GPU-seconds (measured)",
    "finetune_gpu_hours": "Fine-tuning GPU-hours (declared)",
    "peak_gpu_memory_bytes": "Peak GPU memory (bytes)",
    "parameter_count": "Parameters",
}


def pareto_y_options(*, hidden_visible: bool) -> dict[str, str]:
    options = {"final_score": "Final score"} if hidden_visible else {}
    options["open_score"] = "Open-suite score"
    if hidden_visible:
        options["hidden_score"] = "Hidden-suite score"
    for suite in ("open", "hidden") if hidden_visible else ("open",):
        for aspect in ASPECT_NAMES:
            options[f"{suite}_{aspect}"] = f"{ASPECT_LABELS[aspect]} ({suite} suite)"
    return options
