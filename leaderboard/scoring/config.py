"""What a challenge can change about scoring."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from .constants import ABSOLUTE, DEFAULT_SUITE_WEIGHTS, EFFICIENCY_METRICS, FLOOR, MODES, WIN_RATE


@dataclass(frozen=True)
class ScoringConfig:
    """`mode`: "win_rate" (2023's leaderboard) or "absolute".

    `suite_weights`: weight of each suite in the final score; suites not named (or weighted 0) are
    ignored. `efficiency_references`: per efficiency figure, the track's reference value (absolute
    mode only; a figure without a reference is not scored in that mode).
    """

    mode: str = WIN_RATE
    suite_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SUITE_WEIGHTS))
    floor: float = FLOOR
    efficiency_metrics: Mapping[str, bool] = field(default_factory=lambda: dict(EFFICIENCY_METRICS))
    efficiency_references: Mapping[str, float] = field(default_factory=dict)
    include_metrics: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown scoring mode {self.mode!r}; expected one of {MODES}.")
        if not 0 < self.floor <= 1:
            raise ValueError("The floor must be in (0, 1].")
        if any(w < 0 for w in self.suite_weights.values()):
            raise ValueError("Suite weights cannot be negative.")
        if self.mode == ABSOLUTE and any(r <= 0 for r in self.efficiency_references.values()):
            raise ValueError("Efficiency references must be positive.")
