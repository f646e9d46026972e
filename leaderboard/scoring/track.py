"""Score every submission of one track against the field of the other teams' entries.

Input, one dict per scored submission:
    {"submission_id", "team_id", "is_team_entry": bool, "suites": {"open": result, "hidden": result}}
where a result is the engine's result-document subset (runs, records, efficiency).

Each submission is compared with the chosen entries of every OTHER team (its field), never with its
own team's submissions; so a submission that is not its team's entry is scored as if it were.
"""

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .aggregate import aspect_scores, combine_suites, geometric_mean, mean
from .config import ScoringConfig
from .constants import ABSOLUTE, ASPECTS, BIAS, EFFICIENCY, NO_FIELD_WIN_RATE, SIGNIFICANT_DIGITS
from .extract import MetricKey, SuiteMetrics, extract_suite_metrics, lower_is_better


def canonical(value: float) -> float:
    """The value compared for wins and ties: noise below SIGNIFICANT_DIGITS is a tie."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclass
class _KeyIndex:
    """The field's values for one metric key: sorted, for counting wins by bisection."""

    values: list[float] = field(default_factory=list)
    mentions: int = 0


def _field_index(field_metrics: Sequence[SuiteMetrics]) -> dict[MetricKey, _KeyIndex]:
    index: dict[MetricKey, _KeyIndex] = defaultdict(_KeyIndex)
    for metrics in field_metrics:
        for key in metrics.mentioned:
            index[key].mentions += 1
        for key, value in metrics.values.items():
            index[key].values.append(canonical(value))
    for entry in index.values():
        entry.values.sort()
    return dict(index)


def _worse_and_equal(sorted_values: list[float], value: float, lower_better: bool) -> tuple[int, int]:
    lo = bisect.bisect_left(sorted_values, value)
    hi = bisect.bisect_right(sorted_values, value)
    worse = len(sorted_values) - hi if lower_better else lo
    return worse, hi - lo


def _compare(a: float, b: float, lower_better: bool) -> tuple[int, int]:
    """(1, 0) if `a` beats `b`, (0, 1) for a tie, (0, 0) for a loss — the shape of _worse_and_equal."""
    if a == b:
        return 0, 1
    return (1, 0) if (a < b) == lower_better else (0, 0)


def _win_rate(
    key: MetricKey,
    value: float | None,
    index: _KeyIndex | None,
    own: SuiteMetrics | None,
    opponents: int,
    config: ScoringConfig,
) -> float | None:
    """Win rate of `value` against the field minus `own` (the team's own entry, if it is in the field).

    Win = 1, tie = 1/2, loss = 0, divided by the number of opponents (n − 1, not 2023's n). A missing
    value loses to everyone; an opponent missing the value loses to it. Bias metrics are the exception:
    a missing bias metric is "not applicable", so the key is skipped and opponents without it are left
    out of the comparison. None means: not scored.
    """
    lower_better = lower_is_better(key, config.efficiency_metrics)
    values = index.values if index else []
    own_value = own.values.get(key) if own else None
    if key.aspect == BIAS:
        if value is None:
            return None
        opponents = len(values) - (own_value is not None)
    if value is None:
        return 0.0
    if opponents == 0:
        return NO_FIELD_WIN_RATE
    mine = canonical(value)
    worse, equal = _worse_and_equal(values, mine, lower_better)
    if own_value is not None:
        own_worse, own_equal = _compare(mine, canonical(own_value), lower_better)
        worse, equal = worse - own_worse, equal - own_equal
    present_opponents = len(values) - (own_value is not None)
    worse += opponents - present_opponents  # opponents missing the metric lose to a present value
    return (worse + 0.5 * equal) / opponents


def _absolute(key: MetricKey, value: float | None, config: ScoringConfig) -> float | None:
    """Raw value in [0, 1]: main metrics as is, bias as 1 − value, efficiency against the reference."""
    if key.aspect == EFFICIENCY:
        reference = config.efficiency_references.get(key.metric)
        if reference is None:
            return None
        if value is None:
            return 0.0
        if config.efficiency_metrics.get(key.metric, False):  # higher is better (tokens/s)
            return min(1.0, max(0.0, value) / reference)
        return reference / max(reference, value)
    if key.aspect == BIAS:
        return None if value is None else min(1.0, max(0.0, 1.0 - value))
    return 0.0 if value is None else min(1.0, max(0.0, value))


def _universe(mine: SuiteMetrics, index: Mapping[MetricKey, _KeyIndex], own: SuiteMetrics | None) -> set[MetricKey]:
    """The keys a submission is scored on: those it names, and those some opponent names."""
    keys = set(mine.mentioned)
    for key, entry in index.items():
        if entry.mentions - (1 if own and key in own.mentioned else 0) > 0:
            keys.add(key)
    return keys


def _scenario_breakdown(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    grouped: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: {"scores": defaultdict(list), "values": defaultdict(list)}
    )
    for row in rows:
        grouped[row["scenario"]]["scores"][row["aspect"]].append(row["score"])
        # Raw efficiency figures mix seconds, bytes and tokens/s: no meaningful mean.
        if row["value"] is not None and row["aspect"] != EFFICIENCY:
            grouped[row["scenario"]]["values"][row["aspect"]].append(row["value"])
    return {
        scenario: {part: {aspect: mean(v) for aspect, v in parts[part].items()} for part in ("scores", "values")}
        for scenario, parts in sorted(grouped.items())
    }


def _score_suite(
    mine: SuiteMetrics,
    index: Mapping[MetricKey, _KeyIndex],
    own: SuiteMetrics | None,
    opponents: int,
    config: ScoringConfig,
) -> dict[str, Any]:
    scores: dict[MetricKey, float] = {}
    rows: list[dict] = []
    for key in sorted(_universe(mine, index, own)):
        value = mine.values.get(key)
        if config.mode == ABSOLUTE:
            score = _absolute(key, value, config)
        else:
            score = _win_rate(key, value, index.get(key), own, opponents, config)
        if score is None:
            continue
        scores[key] = score
        rows.append(
            {
                **key._asdict(),
                "value": value,
                "score": score,
                "lower_is_better": lower_is_better(key, config.efficiency_metrics),
            }
        )
    aspects = aspect_scores(scores)
    suite: dict[str, Any] = {
        "score": geometric_mean(aspects.values(), config.floor),
        "aspects": {a: aspects.get(a) for a in ASPECTS},
        "scenarios": _scenario_breakdown(rows),
    }
    if config.include_metrics:
        suite["metrics"] = rows
    return suite


def _validate(entries: Sequence[Mapping[str, Any]]) -> None:
    seen: set = set()
    teams_with_entry: set = set()
    for entry in entries:
        if entry["submission_id"] in seen:
            raise ValueError(f"Submission {entry['submission_id']} appears twice.")
        seen.add(entry["submission_id"])
        if entry.get("is_team_entry"):
            if entry["team_id"] in teams_with_entry:
                raise ValueError(f"Team {entry['team_id']} has more than one entry.")
            teams_with_entry.add(entry["team_id"])


def score_track(entries: Sequence[Mapping[str, Any]], config: ScoringConfig | None = None) -> list[dict[str, Any]]:
    """Scores for every submission of a track, in input order. See docs/scoring.md."""
    config = config or ScoringConfig()
    _validate(entries)
    suites = [s for s, w in config.suite_weights.items() if w > 0]
    metrics = [
        {s: extract_suite_metrics((e.get("suites") or {}).get(s), config.efficiency_metrics) for s in suites}
        for e in entries
    ]
    field_positions = [i for i, e in enumerate(entries) if e.get("is_team_entry")]
    team_entry = {entries[i]["team_id"]: i for i in field_positions}
    indexes = {s: _field_index([metrics[i][s] for i in field_positions]) for s in suites}

    results = []
    for i, entry in enumerate(entries):
        own_position = team_entry.get(entry["team_id"])
        opponents = len(field_positions) - (own_position is not None)
        suite_results: dict[str, dict[str, Any]] = {}
        for s in suites:
            own = metrics[own_position][s] if own_position is not None else None
            scored = _score_suite(metrics[i][s], indexes[s], own, opponents, config)
            if scored["score"] is not None:
                suite_results[s] = scored
        final, weights = combine_suites({s: r["score"] for s, r in suite_results.items()}, config.suite_weights)
        for s, r in suite_results.items():
            r["weight"] = weights[s]
        results.append(
            {
                "submission_id": entry["submission_id"],
                "team_id": entry["team_id"],
                "is_team_entry": bool(entry.get("is_team_entry")),
                "opponents": opponents,
                "mode": config.mode,
                "final_score": final,
                "suites": suite_results,
            }
        )
    return results
