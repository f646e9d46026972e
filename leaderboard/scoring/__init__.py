"""Pure scoring rules (no Django): per-metric win rates or absolute values, five aspects, the
geometric mean per suite, and the weighted final score. docs/scoring.md states every rule."""

from .aggregate import aspect_scores, combine_suites, geometric_mean
from .config import ScoringConfig
from .constants import (
    ABSOLUTE,
    ASPECTS,
    DEFAULT_SUITE_WEIGHTS,
    EFFICIENCY_METRICS,
    FLOOR,
    NO_FIELD_WIN_RATE,
    WIN_RATE,
)
from .entries import mark_team_entries
from .extract import MetricKey, extract_suite_metrics, normalize_run_name
from .track import score_track

__all__ = [
    "ABSOLUTE",
    "ASPECTS",
    "DEFAULT_SUITE_WEIGHTS",
    "EFFICIENCY_METRICS",
    "FLOOR",
    "NO_FIELD_WIN_RATE",
    "WIN_RATE",
    "MetricKey",
    "ScoringConfig",
    "aspect_scores",
    "combine_suites",
    "extract_suite_metrics",
    "geometric_mean",
    "mark_team_entries",
    "normalize_run_name",
    "score_track",
]
