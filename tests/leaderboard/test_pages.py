"""The leaderboard pages, their JSON and exports, read as the public, a team and an organizer."""

import csv
import io

import pytest
from django.urls import reverse

from evaluation.models import Submission
from evaluation.services import submission_transition
from leaderboard.models import Reproduction
from leaderboard.services import reproduction_record, standings_finalize_track
from portal.models import AuditEvent

from .conftest import reveal

pytestmark = pytest.mark.django_db


def board_json(client, track, **params):
    response = client.get(reverse("leaderboard:board_json", args=[track.slug]), params)
    assert response.status_code == 200
    return response.json()


def teams(data):
    return [(r["rank"], r["team"]) for r in data["results"]]


def test_ranked_by_final_score_with_ties_broken_by_hidden_then_earlier_submission(client, build):
    a, b, c, d = (build.team(n) for n in ("Alpha", "Bravo", "Charlie", "Delta"))
    build.entry(a, 0.6, 0.5)
    build.entry(b, 0.65, 0.8)  # best hidden: first once revealed
    build.entry(c, 0.7, 0.2)  # best open: first while hidden results are hidden
    build.entry(d, 0.6, 0.5)  # the same as Alpha but submitted later: the tie goes to Alpha
    build.recompute()

    assert teams(board_json(client, build.track)) == [(1, "Charlie"), (2, "Bravo"), (3, "Alpha"), (4, "Delta")]
    reveal(build.track)
    data = board_json(client, build.track)
    assert teams(data) == [(1, "Bravo"), (2, "Alpha"), (3, "Delta"), (4, "Charlie")]
    assert data["results"][1]["final_score"] == data["results"][2]["final_score"]
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "Ties are broken by the higher hidden-suite score, then by the earlier submission" in page


def test_hidden_results_stay_hidden_until_revealed(client, build, organizer):
    a, b = build.team("Alpha"), build.team("Bravo")
    build.entry(a, 0.4, 0.9)
    build.entry(b, 0.6, 0.1)
    build.recompute()

    data = board_json(client, build.track, sort="-hidden_score")
    assert data["sort"] == "rank" and not data["hidden_revealed"]
    assert all("hidden_score" not in r and "final_score" not in r for r in data["results"])
    assert data["awards"]["visible"] is False
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "Open score" in page and "Hidden-suite results stay hidden" in page and "Bravo" in page
    pareto = client.get(reverse("leaderboard:pareto_json", args=[build.track.slug]), {"y": "hidden_score"}).json()
    assert pareto["y"] == "open_score" and "hidden_score" not in pareto["y_options"]

    client.force_login(organizer)  # organizers see everything before the reveal
    data = board_json(client, build.track, sort="-hidden_score")
    assert data["sort"] == "-hidden_score" and teams(data)[0] == (1, "Alpha")
    preview = board_json(client, build.track, view="public")
    assert "final_score" not in preview["results"][0]

    client.logout()
    reveal(build.track)
    data = board_json(client, build.track)
    assert data["hidden_revealed"] and teams(data)[0] == (1, "Alpha")
    assert data["results"][0]["hidden_score"] > data["results"][1]["hidden_score"]


def test_sort_whitelist_filters_and_pagination(client, build):
    for i in range(5):
        team = build.team(f"Team {i}", students=1 if i % 2 else 0)
        build.entry(team, 0.3 + 0.1 * i, 0.5, gpu=100 + 50 * i, base="pythia" if i < 2 else "mistral")
    build.recompute()
    data = board_json(client, build.track, sort="eval_gpu_seconds")
    assert [r["eval_gpu_seconds"] for r in data["results"]] == sorted(r["eval_gpu_seconds"] for r in data["results"])
    assert board_json(client, build.track, sort="-team")["results"][0]["team"] == "Team 4"
    assert board_json(client, build.track, sort="password")["sort"] == "rank"  # not whitelisted
    assert board_json(client, build.track, sort="team__captain__password")["sort"] == "rank"
    assert {r["team"] for r in board_json(client, build.track, student="1")["results"]} == {"Team 1", "Team 3"}
    assert {r["team"] for r in board_json(client, build.track, base="pythia")["results"]} == {"Team 0", "Team 1"}
    page2 = board_json(client, build.track, per_page=2, page=2)
    assert page2["pages"] == 3 and [r["rank"] for r in page2["results"]] == [3, 4]
    assert board_json(client, build.track, page="x")["page"] == 1
    html = client.get(reverse("leaderboard:board", args=[build.track.slug]), {"sort": "-eval_gpu_seconds"})
    assert html.status_code == 200 and 'aria-sort="descending"' in html.content.decode()
    partial = client.get(
        reverse("leaderboard:board", args=[build.track.slug]), {"sort": "team"}, HTTP_HX_REQUEST="true"
    )
    assert partial.content.decode().lstrip().startswith('<div id="board"')


def test_awards_students_partly_verified_failed_reproduction_and_vacant_prizes(client, build, organizer):
    top = [build.team(f"Top {i}") for i in range(3)]
    partly = build.team("Partly students", students=1, others=1)
    students = build.team("All students", students=2)
    for i, team in enumerate(top):
        build.entry(team, 0.9 - 0.05 * i, 0.9 - 0.05 * i)
    build.entry(partly, 0.7, 0.7)
    last = build.entry(students, 0.6, 0.6)
    build.recompute()
    reveal(build.track)

    awards = board_json(client, build.track)["awards"]
    places = [(a["place"], a["team"], a["amount_usd"]) for a in awards["awards"] if a["kind"] == "place"]
    assert places == [(1, "Top 0", 5000), (2, "Top 1", 2500), (3, "Top 2", 1000)]
    student = [(a["team"], a["amount_usd"]) for a in awards["awards"] if a["kind"] == "student"]
    assert student == [("All students", 500)]  # the partly verified team is not eligible
    assert [v["kind"] for v in awards["vacant"]] == ["student"]  # two student awards, one eligible team
    assert awards["provisional"] and awards["unconfirmed"]

    first = awards["awards"][0]["submission_id"]
    reproduction_record(
        submission_id=first, status=Reproduction.Status.FAILED, notes="did not reproduce", actor=organizer
    )
    build.recompute()
    awards = board_json(client, build.track)["awards"]
    places = [(a["place"], a["team"]) for a in awards["awards"] if a["kind"] == "place"]
    assert places == [(1, "Top 1"), (2, "Top 2"), (3, "Partly students")]
    assert [e["team"] for e in awards["excluded"]] == ["Top 0"]
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "reproduction failed" in page and "Provisional" in page
    assert last.pk in [a["submission_id"] for a in awards["awards"]]


def test_fewer_teams_than_prizes_and_finalized_winners(client, build, organizer):
    only = build.team("Only team", students=1)
    build.entry(only, 0.5, 0.5)
    build.recompute()
    reveal(build.track)
    standings_finalize_track(track_id=build.track.pk, actor=organizer)
    data = board_json(client, build.track)
    assert [(a["place"], a["team"]) for a in data["awards"]["awards"]] == [(1, "Only team")]
    assert [v["place"] for v in data["awards"]["vacant"] if v["kind"] == "place"] == [2, 3]
    assert not data["provisional"] and not data["awards"]["provisional"]
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "Winners" in page and "Announced" in page and "Provisional" not in page


def test_disqualified_entries_leave_the_public_board_and_organizers_see_them_struck(client, build, organizer):
    cheat, honest = build.team("Cheaters"), build.team("Honest")
    bad = build.entry(cheat, 0.9, 0.9)
    build.entry(honest, 0.5, 0.5)
    build.recompute()
    submission_transition(submission_id=bad.pk, to=Submission.Status.DISQUALIFIED, reason="Trained on the test set.")
    build.recompute()
    reveal(build.track)

    assert teams(board_json(client, build.track)) == [(1, "Honest")]
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "Cheaters" not in page and "Trained on the test set" not in page
    assert client.get(reverse("leaderboard:analysis", args=[build.track.slug, bad.pk])).status_code == 404

    client.force_login(organizer)
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert 'class="struck">Cheaters' in page and "Trained on the test set." in page
    client.force_login(cheat.captain)
    page = client.get(reverse("leaderboard:analysis", args=[build.track.slug, bad.pk])).content.decode()
    assert "Disqualified." in page and "Trained on the test set." in page


def test_analysis_private_parts_only_for_the_team_and_organizers(client, build, organizer):
    mine, other = build.team("Mine"), build.team("Other")
    submission = build.entry(mine, 0.6, 0.7)
    build.entry(other, 0.5, 0.4)
    build.recompute()
    url = reverse("leaderboard:analysis", args=[build.track.slug, submission.pk])

    public = client.get(url).content.decode()
    assert "Aspects against the track" in public and "mmlu" in public
    assert "Private to the team" not in public and "Hidden task" not in public and "samsum" not in public
    client.force_login(other.captain)
    assert "Private to the team" not in client.get(url).content.decode()

    client.force_login(mine.captain)
    own = client.get(url).content.decode()
    assert "Private to the team" in own and "Hidden task 1" in own and "samsum" not in own
    client.force_login(organizer)
    staff = client.get(url).content.decode()
    assert "Private to the team" in staff and "samsum" in staff
    assert client.get(reverse("leaderboard:analysis", args=[build.track.slug, 999999])).status_code == 404


def test_exports_columns_per_role(client, build, organizer):
    a, b = build.team("Alpha"), build.team("Bravo")
    build.entry(a, 0.6, 0.6)
    build.entry(a, 0.4, 0.4, final=False)  # not the entry: only organizers get it
    build.entry(b, 0.5, 0.5)
    build.recompute()
    csv_url = reverse("leaderboard:export_csv", args=[build.track.slug])
    json_url = reverse("leaderboard:export_json", args=[build.track.slug])

    rows = list(csv.DictReader(io.StringIO(client.get(csv_url).content.decode())))
    assert len(rows) == 2 and "open_score" in rows[0]
    assert not {"final_score", "hidden_score", "hidden_accuracy", "reproduction", "team_id"} & set(rows[0])
    reveal(build.track)
    public = client.get(json_url).json()
    assert {"final_score", "hidden_score", "hidden_accuracy"} <= set(public["columns"])
    assert "reproduction" not in public["columns"] and len(public["rows"]) == 2

    client.force_login(organizer)
    staff = client.get(json_url).json()
    assert {"reproduction", "is_team_entry", "rank_if_entry", "status_reason", "team_id"} <= set(staff["columns"])
    assert len(staff["rows"]) == 3
    response = client.get(csv_url)
    assert 'filename="standings-4090-organizers.csv"' in response["Content-Disposition"]


def test_organizer_actions_are_refused_to_others_and_audited(client, build, organizer):
    team = build.team("Alpha")
    submission = build.entry(team, 0.5, 0.5)
    build.recompute()
    slug = build.track.slug
    client.force_login(team.captain)
    assert client.post(reverse("leaderboard:reveal", args=[slug])).status_code == 403
    assert client.post(reverse("leaderboard:finalize", args=[slug])).status_code == 403
    assert (
        client.post(reverse("leaderboard:reproduction", args=[slug, submission.pk]), {"status": "verified"}).status_code
        == 403
    )
    assert client.get(reverse("leaderboard:reveal", args=[slug])).status_code == 405

    client.force_login(organizer)
    assert client.post(reverse("leaderboard:reveal", args=[slug])).status_code == 302
    assert client.post(reverse("leaderboard:reveal", args=[slug])).status_code == 409  # already public
    response = client.post(reverse("leaderboard:reproduction", args=[slug, submission.pk]), {"status": "bogus"})
    assert response.status_code == 409
    assert (
        client.post(reverse("leaderboard:reproduction", args=[slug, submission.pk]), {"status": "verified"}).status_code
        == 302
    )
    assert client.post(reverse("leaderboard:finalize", args=[slug])).status_code == 302
    build.track.refresh_from_db()
    assert build.track.is_finalized and build.track.challenge.hidden_revealed
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"challenge.reveal_hidden", "reproduction.record", "track.finalize"} <= actions


def test_pages_answer_without_standings_and_for_unknown_tracks(client, build):
    assert client.get(reverse("leaderboard:board", args=[build.track.slug])).status_code == 200
    assert board_json(client, build.track)["results"] == []
    assert client.get(reverse("leaderboard:board", args=["nope"])).status_code == 404
    assert client.get(reverse("leaderboard:board_json", args=["nope"])).json()["error"]["code"] == "not_found"
    assert client.get(reverse("leaderboard:index")).status_code == 200
    assert client.get(reverse("leaderboard:pareto", args=[build.track.slug])).status_code == 200


def test_cached_public_answers_follow_each_new_snapshot_reveal_and_finalize(client, build, organizer):
    a = build.team("Alpha")
    build.entry(a, 0.5, 0.5)
    build.recompute()
    assert teams(board_json(client, build.track)) == [(1, "Alpha")]
    page = client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    assert "Bravo" not in page
    build.entry(build.team("Bravo"), 0.9, 0.9)
    build.recompute()  # a new snapshot: the cached answers are not reused
    assert teams(board_json(client, build.track)) == [(1, "Bravo"), (2, "Alpha")]
    assert "Bravo" in client.get(reverse("leaderboard:board", args=[build.track.slug])).content.decode()
    reveal(build.track)
    assert "final_score" in board_json(client, build.track)["results"][0]
    standings_finalize_track(track_id=build.track.pk, actor=organizer)
    assert board_json(client, build.track)["provisional"] is False


def test_a_rows_breakdown_is_loaded_on_demand_without_hidden_scenarios(client, build, organizer):
    a = build.team("Alpha")
    sub = build.entry(a, 0.5, 0.5)
    build.recompute()
    url = reverse("leaderboard:breakdown", args=[build.track.slug, sub.pk])
    public = client.get(url).content.decode()
    assert "mmlu" in public and "samsum" not in public
    client.force_login(organizer)
    assert "samsum" in client.get(url).content.decode()
    assert client.get(reverse("leaderboard:breakdown", args=[build.track.slug, 999999])).status_code == 404


def test_a_perturbation_drop_reads_as_a_signed_change_never_minus_zero():
    from leaderboard.templatetags.leaderboard_format import drop

    assert drop(0.0) == "0.000" and drop(-0.0) == "0.000" and drop(-0.00001) == "0.000"
    assert drop(0.067) == "−0.067" and drop(-0.01) == "+0.010" and drop(None) == "—"
