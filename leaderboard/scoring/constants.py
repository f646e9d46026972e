"""Named constants of the scoring rules. docs/scoring.md explains each one."""

ACCURACY = "accuracy"
ROBUSTNESS = "robustness"
FAIRNESS = "fairness"
BIAS = "bias"
EFFICIENCY = "efficiency"
ASPECTS: tuple[str, ...] = (ACCURACY, ROBUSTNESS, FAIRNESS, BIAS, EFFICIENCY)

WIN_RATE = "win_rate"
ABSOLUTE = "absolute"
MODES: tuple[str, ...] = (WIN_RATE, ABSOLUTE)

# An aspect score of 0 enters the geometric mean as this value: one zero among five aspects
# multiplies the suite score by FLOOR ** (1/5) ≈ 0.25 — a visible penalty, not a collapse to 0
# (2023 used the smallest positive float, which made any zero wipe out the score).
FLOOR = 1e-3

DEFAULT_SUITE_WEIGHTS: dict[str, float] = {"open": 1 / 3, "hidden": 2 / 3}

# With no other team in the track a win rate is undefined; the entry is scored as if it tied an
# identical opponent on every metric it has (a missing metric is still a loss, i.e. 0).
NO_FIELD_WIN_RATE = 0.5

# Values are compared after rounding to this many significant digits, so two entries whose metric
# differs only by floating-point noise tie and share the credit.
SIGNIFICANT_DIGITS = 12

# Efficiency figures the engine measures, and whether higher is better. wall_seconds is left out
# on purpose: on a one-GPU worker it duplicates gpu_seconds and adds host-side HELM overhead that
# is not the model's; parameter_count is a property of the model, shown as a compute column.
EFFICIENCY_METRICS: dict[str, bool] = {
    "gpu_seconds": False,
    "output_tokens_per_second": True,
    "latency_mean_s": False,
    "latency_p95_s": False,
    "peak_gpu_memory_bytes": False,
}

# HELM names bias metrics "bias_metric:mode=...,demographic_category=...[,target_category=...]".
BIAS_METRIC_PREFIX = "bias_metric:"

# The pseudo-scenario under which the suite-level efficiency figures are reported.
RUNTIME_SCENARIO = "runtime"

# Records of runs that ended with one of these statuses are ignored (the run counts as missing).
FAILED_RUN_STATUSES = frozenset({"failed", "error", "errored", "timeout", "timed_out", "cancelled", "crashed"})

# Which record to use when HELM reports a metric for several splits.
SPLIT_PREFERENCE: tuple[str, ...] = ("test", "valid", "train")

# Run-name arguments that name the model; stripped so that runs of different submissions match.
RUN_NAME_MODEL_ARGS = frozenset({"model", "model_deployment"})
