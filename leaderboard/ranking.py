"""Ranking and awards of one track, on plain data (no Django). docs/scoring.md states the rules."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

RANKING_RULE = (
    "Teams are ranked by final score, highest first. Ties are broken by the higher hidden-suite score, "
    "then by the earlier submission; no two teams share a rank. Scores are compared to 9 decimal places."
)
SCORE_DECIMALS = 9

PENDING = "pending"
VERIFIED = "verified"
FAILED = "failed"
REPRODUCTION_STATUSES = (PENDING, VERIFIED, FAILED)


def _score(value: float | None) -> float:
    """Descending-sort component: a missing score sorts after every real one."""
    if value is None or not math.isfinite(value):
        return math.inf
    return -round(value, SCORE_DECIMALS)


def sort_key(row: Mapping[str, Any]) -> tuple:
    submitted_at = row.get("submitted_at")
    return (
        _score(row.get("final_score")),
        _score(row.get("hidden_score")),
        submitted_at is None,
        submitted_at if submitted_at is not None else 0,
        row["submission_id"],
    )


def rank_entries(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` in ranking order with `rank` and `rank_if_entry`.

    Rows: {submission_id, team_id, is_team_entry, final_score, hidden_score, submitted_at, disqualified}.
    Only team entries that are not disqualified and have a final score get a `rank` (1, 2, …).
    Every other row with a final score gets `rank_if_entry`: the rank it would take in place of its
    team's entry (how a non-entry submission is "scored as if it were" the entry).
    """
    ranked = sorted(
        (r for r in rows if r.get("is_team_entry") and not r.get("disqualified") and r.get("final_score") is not None),
        key=sort_key,
    )
    rank_of = {r["submission_id"]: i + 1 for i, r in enumerate(ranked)}
    out = []
    for row in sorted(rows, key=sort_key):
        rank = rank_of.get(row["submission_id"])
        if rank is not None:
            rank_if_entry = rank
        elif row.get("final_score") is None or row.get("disqualified"):
            rank_if_entry = None
        else:
            key = sort_key(row)
            rank_if_entry = 1 + sum(1 for r in ranked if r["team_id"] != row["team_id"] and sort_key(r) < key)
        out.append({**row, "rank": rank, "rank_if_entry": rank_if_entry})
    return out


def _prize_slots(prizes: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Prize rows {kind: "place"|"student", place, amount_usd, count} → ordered place and student slots."""
    places = sorted((p for p in prizes if p["kind"] == "place"), key=lambda p: p["place"])
    students = sorted((p for p in prizes if p["kind"] == "student"), key=lambda p: -p["amount_usd"])
    place_slots = [{"kind": "place", "place": p["place"], "amount_usd": p["amount_usd"]} for p in places]
    student_slots = [
        {"kind": "student", "place": None, "amount_usd": p["amount_usd"]}
        for p in students
        for _ in range(p.get("count") or 1)
    ]
    return place_slots, student_slots


def awards(
    ranked: Sequence[Mapping[str, Any]],
    prizes: Sequence[Mapping[str, Any]],
    *,
    require_reproduction_for_student_awards: bool = False,
) -> dict[str, Any]:
    """Who wins what in one track.

    `ranked`: the output of rank_entries (rows with `rank`), each row also carrying
    `student_eligible` (every member a verified student) and `reproduction` (None, "pending",
    "verified" or "failed"). Rules:
    - Places go to ranked teams in rank order; a team whose reproduction failed is skipped, so its
      place passes to the next team; a failed team wins no award at all.
    - Student awards go to the highest-ranked eligible teams that did not win a place.
    - A pending (or not yet recorded) reproduction keeps the place provisionally: the award is
      listed with `confirmed: False` and the whole result is `provisional` until every award that
      needs a reproduction is verified (places always; student awards only if asked).
    - Prizes left without a team (fewer teams than prizes) are listed under `vacant`.
    """
    place_slots, student_slots = _prize_slots(prizes)
    candidates = sorted(
        (r for r in ranked if r.get("rank") is not None and r.get("reproduction") != FAILED), key=lambda r: r["rank"]
    )
    winners: list[dict[str, Any]] = []

    def award(slot: dict, row: Mapping[str, Any], needs_reproduction: bool) -> dict[str, Any]:
        status = row.get("reproduction") or PENDING
        return {
            **slot,
            "submission_id": row["submission_id"],
            "team_id": row["team_id"],
            "rank": row["rank"],
            "reproduction": status if needs_reproduction else row.get("reproduction"),
            "confirmed": status == VERIFIED or not needs_reproduction,
        }

    for slot, row in zip(place_slots, candidates, strict=False):
        winners.append(award(slot, row, needs_reproduction=True))
    placed = {w["team_id"] for w in winners}
    eligible = [r for r in candidates if r["team_id"] not in placed and r.get("student_eligible")]
    for slot, row in zip(student_slots, eligible, strict=False):
        winners.append(award(slot, row, needs_reproduction=require_reproduction_for_student_awards))
    place_count = sum(1 for w in winners if w["kind"] == "place")
    student_count = len(winners) - place_count
    vacant = place_slots[place_count:] + student_slots[student_count:]
    return {
        "awards": winners,
        "vacant": vacant,
        "provisional": any(not w["confirmed"] for w in winners),
        "excluded": [r["team_id"] for r in ranked if r.get("rank") is not None and r.get("reproduction") == FAILED],
    }
