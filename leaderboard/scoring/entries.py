"""Which scored submission stands for each team."""

from collections.abc import Mapping, Sequence
from typing import Any


def mark_team_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `entries` with exactly one `is_team_entry` per team.

    The team's chosen entry (`is_chosen`) wins when it is among the scored submissions given; a
    team that chose none, or whose choice is not scored, is represented by its latest scored
    submission (by `submitted_at`, then the larger id), as in 2023 where the last upload counted.
    """
    best: dict[Any, Mapping[str, Any]] = {}
    for entry in entries:
        current = best.get(entry["team_id"])
        if current is None or _preference(entry) > _preference(current):
            best[entry["team_id"]] = entry
    chosen = {id(e) for e in best.values()}
    return [{**e, "is_team_entry": id(e) in chosen} for e in entries]


def _preference(entry: Mapping[str, Any]) -> tuple:
    submitted_at = entry.get("submitted_at")
    return (bool(entry.get("is_chosen")), submitted_at is not None, submitted_at or 0, entry["submission_id"])
