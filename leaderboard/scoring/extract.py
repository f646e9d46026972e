"""From one suite's result document to the metric values each aspect uses.

A metric is identified by a `MetricKey` (aspect, scenario, run, metric). Runs are matched across
submissions by their name with the model arguments removed.
"""

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .constants import (
    ACCURACY,
    BIAS,
    BIAS_METRIC_PREFIX,
    EFFICIENCY,
    FAILED_RUN_STATUSES,
    FAIRNESS,
    ROBUSTNESS,
    RUN_NAME_MODEL_ARGS,
    RUNTIME_SCENARIO,
    SPLIT_PREFERENCE,
)


class MetricKey(NamedTuple):
    aspect: str
    scenario: str
    run: str
    metric: str


@dataclass
class SuiteMetrics:
    """`values`: the finite metric values found. `mentioned`: every key this result names,
    including the accuracy of runs that failed or produced no number (those count as missing)."""

    values: dict[MetricKey, float] = field(default_factory=dict)
    mentioned: set[MetricKey] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return not self.mentioned


@functools.lru_cache(maxsize=8192)
def normalize_run_name(name: str) -> str:
    """`mmlu:subject=anatomy,model=neurips_local` → `mmlu:subject=anatomy`."""
    scenario, sep, args = name.partition(":")
    if not sep:
        return name
    kept = [a for a in args.split(",") if a and a.split("=", 1)[0] not in RUN_NAME_MODEL_ARGS]
    return f"{scenario}:{','.join(kept)}" if kept else scenario


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _perturbation_kind(record: Mapping[str, Any]) -> str | None:
    """ "none" for unperturbed, "robustness"/"fairness" for HELM's worst-case numbers, else None."""
    perturbation = record.get("perturbation")
    if isinstance(perturbation, Mapping):
        perturbation = perturbation.get("name")
    if not perturbation:
        return "none"
    if perturbation in (ROBUSTNESS, FAIRNESS) and record.get("computed_on") == "worst":
        return perturbation
    return None


def _record_preference(record: Mapping[str, Any]) -> tuple[int, int]:
    split = record.get("split")
    split_rank = SPLIT_PREFERENCE.index(split) if split in SPLIT_PREFERENCE else len(SPLIT_PREFERENCE)
    return (split_rank, 0 if record.get("sub_split") in (None, "") else 1)


def extract_suite_metrics(result: Mapping[str, Any] | None, efficiency_metrics: Mapping[str, bool]) -> SuiteMetrics:
    """The metric values of one suite of one submission (empty for a missing suite)."""
    out = SuiteMetrics()
    if not result:
        return out
    runs = {normalize_run_name(r["name"]): r for r in result.get("runs") or []}
    failed = {name for name, r in runs.items() if (r.get("status") or "").lower() in FAILED_RUN_STATUSES}

    def scenario_of(run: str, record: Mapping[str, Any] | None = None) -> str:
        return (record or {}).get("scenario") or runs.get(run, {}).get("scenario") or run.split(":", 1)[0]

    # The accuracy of every listed run is expected, so a failed run is a missing metric, not an absent one.
    for run, info in runs.items():
        if info.get("main_metric"):
            out.mentioned.add(MetricKey(ACCURACY, scenario_of(run), run, info["main_metric"]))

    best: dict[MetricKey, tuple[tuple[int, int], float | None]] = {}
    for record in result.get("records") or []:
        run = normalize_run_name(record.get("run") or "")
        if run in failed:
            continue
        kind = _perturbation_kind(record)
        metric = record.get("metric") or ""
        main_metric = runs.get(run, {}).get("main_metric")
        if kind is None:
            continue
        if metric == main_metric:
            aspect = ACCURACY if kind == "none" else kind
        elif kind == "none" and metric.startswith(BIAS_METRIC_PREFIX):
            aspect = BIAS
        else:
            continue
        key = MetricKey(aspect, scenario_of(run, record), run, metric)
        preference = _record_preference(record)
        if key not in best or preference < best[key][0]:
            best[key] = (preference, _finite(record.get("value")))

    for key, (_, value) in best.items():
        # A bias metric HELM could not compute (no demographic words in the outputs) is not
        # applicable rather than bad: it is not mentioned at all. A main metric without a value is missing.
        if value is None and key.aspect == BIAS:
            continue
        out.mentioned.add(key)
        if value is not None:
            out.values[key] = value

    efficiency = result.get("efficiency") or {}
    for name in efficiency_metrics:
        if name in efficiency:
            key = MetricKey(EFFICIENCY, RUNTIME_SCENARIO, "", name)
            out.mentioned.add(key)
            value = _finite(efficiency[name])
            if value is not None:
                out.values[key] = value
    return out


def lower_is_better(key: MetricKey, efficiency_metrics: Mapping[str, bool]) -> bool:
    if key.aspect == BIAS:
        return True
    if key.aspect == EFFICIENCY:
        return not efficiency_metrics.get(key.metric, False)
    return False
