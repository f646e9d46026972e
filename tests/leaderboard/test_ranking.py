"""Ranking and award rules on hand-built standings (pure functions, no database)."""

from datetime import UTC, datetime, timedelta

from leaderboard.ranking import FAILED, PENDING, VERIFIED, awards, rank_entries

T0 = datetime(2023, 9, 1, tzinfo=UTC)

PRIZES = [
    {"kind": "place", "place": 1, "amount_usd": 5000},
    {"kind": "place", "place": 2, "amount_usd": 2500},
    {"kind": "place", "place": 3, "amount_usd": 1000},
    {"kind": "student", "amount_usd": 500, "count": 2},
]


def row(sid, team, final, hidden=None, minutes=0, **extra):
    return {
        "submission_id": sid,
        "team_id": team,
        "is_team_entry": True,
        "final_score": final,
        "hidden_score": hidden,
        "submitted_at": T0 + timedelta(minutes=minutes),
        **extra,
    }


def ranks(rows):
    return {r["submission_id"]: r["rank"] for r in rank_entries(rows)}


def test_rank_by_final_score_then_hidden_then_earlier_submission():
    rows = [
        row(1, "A", 0.5, hidden=0.4, minutes=0),
        row(2, "B", 0.7, hidden=0.1, minutes=5),
        row(3, "C", 0.5, hidden=0.6, minutes=9),  # ties A on final, wins on hidden
        row(4, "D", 0.5, hidden=0.4, minutes=3),  # ties A on final and hidden, submitted later
        row(5, "E", 0.5 + 1e-12, hidden=0.4, minutes=1),  # float noise is a tie with A too
    ]
    assert ranks(rows) == {2: 1, 3: 2, 1: 3, 5: 4, 4: 5}
    assert [r["submission_id"] for r in rank_entries(rows)] == [2, 3, 1, 5, 4]


def test_disqualified_non_entries_and_unscored_rows_have_no_rank():
    rows = [
        row(1, "A", 0.9, disqualified=True),
        row(2, "B", 0.5),
        row(3, "C", None),
        row(4, "B", 0.8, is_team_entry=False),
        row(5, "D", 0.3),
    ]
    ranked = {r["submission_id"]: r for r in rank_entries(rows)}
    assert {sid: r["rank"] for sid, r in ranked.items()} == {1: None, 2: 1, 3: None, 4: None, 5: 2}
    # B's other submission would rank 1st in place of B's entry (it beats D; B's own entry is not counted).
    assert ranked[4]["rank_if_entry"] == 1
    assert ranked[1]["rank_if_entry"] is None and ranked[3]["rank_if_entry"] is None
    assert ranked[5]["rank_if_entry"] == 2


def standings(*specs):
    """specs: (team, final, student_eligible, reproduction)."""
    rows = [
        row(i + 1, team, final, minutes=i, student_eligible=eligible, reproduction=repro)
        for i, (team, final, eligible, repro) in enumerate(specs)
    ]
    return rank_entries(rows)


def summary(result):
    return [(a["kind"], a["place"], a["team_id"], a["amount_usd"], a["confirmed"]) for a in result["awards"]]


def test_top_three_and_two_student_awards_outside_them():
    ranked = standings(
        ("A", 0.9, True, VERIFIED),
        ("B", 0.8, False, VERIFIED),
        ("C", 0.7, False, VERIFIED),
        ("D", 0.6, False, None),  # not eligible
        ("E", 0.5, True, None),
        ("F", 0.4, True, None),
        ("G", 0.3, True, None),  # third eligible team outside the places: no award left
    )
    result = awards(ranked, PRIZES)
    assert summary(result) == [
        ("place", 1, "A", 5000, True),
        ("place", 2, "B", 2500, True),
        ("place", 3, "C", 1000, True),
        ("student", None, "E", 500, True),
        ("student", None, "F", 500, True),
    ]
    assert result["vacant"] == [] and result["provisional"] is False


def test_a_failed_reproduction_gives_its_place_to_the_next_team():
    ranked = standings(
        ("A", 0.9, False, VERIFIED),
        ("B", 0.8, True, FAILED),  # loses its place and any student award
        ("C", 0.7, False, VERIFIED),
        ("D", 0.6, True, VERIFIED),
        ("E", 0.5, True, None),
    )
    result = awards(ranked, PRIZES)
    assert summary(result) == [
        ("place", 1, "A", 5000, True),
        ("place", 2, "C", 2500, True),
        ("place", 3, "D", 1000, True),
        ("student", None, "E", 500, True),
    ]
    assert result["excluded"] == ["B"]
    assert result["vacant"] == [{"kind": "student", "place": None, "amount_usd": 500}]


def test_pending_reproductions_hold_their_place_provisionally():
    ranked = standings(("A", 0.9, False, VERIFIED), ("B", 0.8, False, PENDING), ("C", 0.7, False, None))
    result = awards(ranked, PRIZES)
    assert summary(result) == [
        ("place", 1, "A", 5000, True),
        ("place", 2, "B", 2500, False),
        ("place", 3, "C", 1000, False),
    ]
    assert [a["reproduction"] for a in result["awards"]] == [VERIFIED, PENDING, PENDING]
    assert result["provisional"] is True


def test_student_awards_can_require_reproduction_too():
    ranked = standings(("A", 0.9, False, VERIFIED), ("B", 0.8, True, None))
    lenient = awards(ranked, PRIZES[:1] + PRIZES[3:])
    strict = awards(ranked, PRIZES[:1] + PRIZES[3:], require_reproduction_for_student_awards=True)
    assert summary(lenient)[1] == ("student", None, "B", 500, True)
    assert summary(strict)[1] == ("student", None, "B", 500, False) and strict["provisional"]


def test_fewer_teams_than_prizes_leaves_prizes_vacant():
    ranked = standings(("A", 0.9, True, VERIFIED), ("B", 0.8, True, VERIFIED))
    result = awards(ranked, PRIZES)
    assert summary(result) == [("place", 1, "A", 5000, True), ("place", 2, "B", 2500, True)]
    assert result["vacant"] == [
        {"kind": "place", "place": 3, "amount_usd": 1000},
        {"kind": "student", "place": None, "amount_usd": 500},
        {"kind": "student", "place": None, "amount_usd": 500},
    ]
    assert awards([], PRIZES)["awards"] == []


def test_disqualified_teams_win_nothing():
    rows = [
        row(1, "A", 0.9, student_eligible=True, reproduction=VERIFIED, disqualified=True),
        row(2, "B", 0.8, student_eligible=True, reproduction=VERIFIED),
    ]
    result = awards(rank_entries(rows), PRIZES)
    assert [(a["team_id"], a["place"]) for a in result["awards"]] == [("B", 1)]
