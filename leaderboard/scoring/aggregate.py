"""From per-metric scores to aspects, suites and the final score."""

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

from .constants import ASPECTS
from .extract import MetricKey


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def aspect_scores(metric_scores: Mapping[MetricKey, float]) -> dict[str, float]:
    """Per aspect: the mean over scenarios of the mean over that scenario's metrics.

    Each scenario counts once per aspect however many runs or metrics it has (55 MMLU subjects do not
    outweigh one GSM8K). An aspect without any metric is absent from the result, not 0.
    """
    by_scenario: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, score in metric_scores.items():
        by_scenario[key.aspect][key.scenario].append(score)
    return {
        aspect: mean(mean(scores) for scores in by_scenario[aspect].values())
        for aspect in ASPECTS
        if aspect in by_scenario
    }


def geometric_mean(scores: Iterable[float], floor: float) -> float | None:
    """Geometric mean of the scores, each raised to at least `floor` first; None for no scores."""
    floored = [max(s, floor) for s in scores]
    if not floored:
        return None
    # At most five factors, each >= floor: the product cannot underflow.
    return math.prod(floored) ** (1 / len(floored))


def combine_suites(suite_scores: Mapping[str, float | None], weights: Mapping[str, float]) -> tuple[float | None, dict]:
    """Weighted mean of the suite scores that exist; weights renormalised over those suites."""
    present = {s: weights[s] for s, score in suite_scores.items() if score is not None and weights.get(s, 0) > 0}
    total = math.fsum(present.values())
    if not total:
        return None, {}
    effective = {s: w / total for s, w in present.items()}
    return math.fsum(effective[s] * suite_scores[s] for s in effective), effective
