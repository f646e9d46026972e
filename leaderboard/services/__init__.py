from .eligibility import standings_recompute_for_teams
from .standings import (
    reproduction_record,
    scoring_config_for_track,
    standings_finalize_track,
    standings_recompute_for_track,
)
from .visibility import hidden_results_reveal

__all__ = [
    "hidden_results_reveal",
    "reproduction_record",
    "scoring_config_for_track",
    "standings_finalize_track",
    "standings_recompute_for_teams",
    "standings_recompute_for_track",
]
