"""The leaderboard API answers from the same selectors as the pages: the same rows in the same order with
the same visibility, for the public, a team and an organizer, before and after the reveal."""

import pytest
from django.urls import reverse

from evaluation.models import Submission
from evaluation.services import submission_transition

from .conftest import reveal

pytestmark = pytest.mark.django_db

COMPARED = (
    "submission_id",
    "rank",
    "score",
    "open_score",
    "final_score",
    "hidden_score",
    "aspects",
    "student_eligible",
)


def api(client, path: str, status: int = 200, **params) -> dict:
    response = client.get(f"/api/v1/{path}", params)
    assert response.status_code == status, response.content[:300]
    return response.json()


def page_json(client, name: str, track, **params) -> dict:
    response = client.get(reverse(f"leaderboard:{name}", args=[track.slug]), params)
    assert response.status_code == 200
    return response.json()


def same_rows(api_rows: list[dict], page_rows: list[dict]) -> None:
    assert [{k: r.get(k) for k in COMPARED} for r in api_rows] == [{k: r.get(k) for k in COMPARED} for r in page_rows]


@pytest.fixture
def board(build):
    teams = [build.team(name, students=1 if name == "Charlie" else 0) for name in ("Alpha", "Bravo", "Charlie")]
    build.entry(teams[0], 0.6, 0.5, gpu=100)
    build.entry(teams[1], 0.65, 0.8, gpu=300)  # best hidden: first once revealed
    build.entry(teams[2], 0.7, 0.2, gpu=200)  # best open: first before
    cheat = build.team("Cheaters")
    bad = build.entry(cheat, 0.9, 0.9)
    build.recompute()
    submission_transition(submission_id=bad.pk, to=Submission.Status.DISQUALIFIED, reason="Trained on the test set.")
    build.recompute()
    return build, teams, bad


@pytest.mark.parametrize("who", ["anonymous", "captain", "organizer"])
def test_api_and_page_agree_before_and_after_the_reveal(client, board, organizer, who):
    build, teams, _ = board
    if who == "captain":
        client.force_login(teams[0].captain)
    elif who == "organizer":
        client.force_login(organizer)
    track = build.track
    for revealed in (False, True):
        if revealed:
            reveal(track)
        for params in ({}, {"sort": "-accuracy"}, {"sort": "eval_gpu_seconds"}, {"student": "1"}):
            api_params = {"ordering": params.get("sort", ""), "student_only": "student" in params}
            data = api(client, f"leaderboards/{track.slug}/", **api_params)
            same_rows(data["results"], page_json(client, "board_json", track, **params)["results"])
            assert data["hidden_visible"] == (revealed or who == "organizer")
        pareto = api(client, f"leaderboards/{track.slug}/pareto/")
        page_pareto = page_json(client, "pareto_json", track)
        assert pareto["points"] == page_pareto["points"] and pareto["frontier"] == page_pareto["frontier"]
        awards = api(client, f"leaderboards/{track.slug}/awards/")
        page_awards = page_json(client, "board_json", track)["awards"]
        assert awards["visible"] == page_awards["visible"] and awards["awards"] == page_awards["awards"]


def test_before_the_reveal_the_api_ranks_by_open_rank_and_hides_hidden_columns(client, board):
    build, _, bad = board
    path = f"leaderboards/{build.track.slug}/"
    data = api(client, path)
    assert [(r["rank"], r["team"]["name"]) for r in data["results"]] == [(1, "Charlie"), (2, "Bravo"), (3, "Alpha")]
    assert all(r["final_score"] is None and r["hidden_score"] is None and r["hidden"] is None for r in data["results"])
    assert "hidden_score" not in data["sortable"] and data["disqualified"] == []
    assert bad.pk not in {r["submission_id"] for r in data["results"]}
    refused = api(client, path, 400, ordering="-hidden_score")
    assert refused["error"]["fields"] == {"ordering": [refused["error"]["message"]]}
    assert api(client, path, 400, suite="hidden")["error"]["code"] == "invalid"
    assert api(client, f"{path}pareto/", 400, y="hidden_score")["error"]["fields"].keys() == {"y"}
    assert api(client, f"{path}awards/")["awards"] == []

    reveal(build.track)
    data = api(client, path, ordering="-hidden_score", suite="hidden")
    hidden_scores = [r["hidden_score"] for r in data["results"]]
    assert None not in hidden_scores and hidden_scores == sorted(hidden_scores, reverse=True)
    assert all(r["hidden_score"] is not None and r["aspects"] == r["hidden"] for r in data["results"])
    by_rank = sorted(api(client, path)["results"], key=lambda r: r["rank"])
    places = [a for a in api(client, f"{path}awards/")["awards"] if a["kind"] == "place"]
    assert [a["team"] for a in places] == [r["team"]["name"] for r in by_rank]


def test_disqualified_submissions_only_for_organizers(client, board, organizer):
    build, _, bad = board
    path = f"leaderboards/{build.track.slug}/"
    assert api(client, path)["disqualified"] == []
    client.force_login(organizer)
    data = api(client, path)
    assert [(d["submission_id"], d["reason"]) for d in data["disqualified"]] == [(bad.pk, "Trained on the test set.")]
    assert bad.pk not in {r["submission_id"] for r in data["results"]}


def test_analysis_follows_the_page(client, board, organizer):
    build, teams, bad = board
    submission = teams[0].submissions.get()
    path = f"submissions/{submission.pk}/analysis/"
    public = api(client, path)
    assert public["scores"]["hidden"] is None and public["scores"]["rank"] == 3  # the open-suite rank
    assert {c["suite"] for c in public["comparison"]} == {"open"} and list(public["scenarios"]) == ["open"]
    assert public["on_frontier"] is True  # the least evaluation GPU-seconds
    assert api(client, f"submissions/{bad.pk}/analysis/", 404)["error"]["code"] == "not_found"

    client.force_login(teams[0].captain)  # its team sees its own hidden numbers, never the scenario names
    own = api(client, path)
    hidden_rows = [c for c in own["comparison"] if c["suite"] == "hidden"]
    assert hidden_rows and all(c["value"] is not None for c in hidden_rows if c["aspect"] == "accuracy")
    assert all(c["median"] is None and c["best"] is None for c in hidden_rows)  # no other team's hidden numbers
    assert all(r["scenario"].startswith("Hidden task ") for r in own["scenarios"]["hidden"])
    assert own["scores"]["final"] is None and own["scores"]["hidden_score"] is None

    client.force_login(bad.team.captain)
    mine = api(client, f"submissions/{bad.pk}/analysis/")
    assert mine["disqualified"] and mine["disqualification_reason"] == "Trained on the test set."

    client.force_login(organizer)
    staff = api(client, path)
    assert {"ethics", "samsum"} <= {r["scenario"] for r in staff["scenarios"]["hidden"]}
    assert staff["scores"]["final"] is not None
