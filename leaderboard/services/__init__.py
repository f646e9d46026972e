from .standings import (
    reproduction_record,
    scoring_config_for_track,
    standings_finalize_track,
    standings_recompute_for_track,
)

__all__ = [
    "reproduction_record",
    "scoring_config_for_track",
    "standings_finalize_track",
    "standings_recompute_for_track",
]
