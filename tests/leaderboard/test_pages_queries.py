"""The board, its JSON, the Pareto data, the analysis page and the exports read a constant number of
queries, whatever the number of teams and submissions."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

pytestmark = pytest.mark.django_db

MAX_QUERIES = 18


def seed(build, teams: int, per_team: int = 2, prefix: str = "Team"):
    first = None
    for i in range(teams):
        team = build.team(f"{prefix} {i:03d}", students=i % 2)
        for j in range(per_team):
            sub = build.entry(team, 0.2 + 0.7 * ((i * 7 + j) % 13) / 13, 0.3 + 0.01 * i, gpu=50 + i, final=j == 0)
            first = first or sub
    build.recompute()
    return first


def counts(client, build, submission) -> dict[str, int]:
    slug = build.track.slug
    urls = {
        "board": reverse("leaderboard:board", args=[slug]) + "?sort=-eval_gpu_seconds&student=1",
        "json": reverse("leaderboard:board_json", args=[slug]) + "?breakdown=1",
        "pareto": reverse("leaderboard:pareto_json", args=[slug]),
        "analysis": reverse("leaderboard:analysis", args=[slug, submission.pk]),
        "export": reverse("leaderboard:export_json", args=[slug]),
    }
    out = {}
    for name, url in urls.items():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        out[name] = len(ctx)
    return out


@pytest.mark.parametrize("as_organizer", [False, True])
def test_query_count_does_not_grow_with_the_number_of_submissions(client, build, organizer, as_organizer):
    if as_organizer:
        client.force_login(organizer)
    submission = seed(build, 3)
    small = counts(client, build, submission)
    seed(build, 40, prefix="More")
    large = counts(client, build, submission)
    assert small == large
    assert max(large.values()) <= MAX_QUERIES


@pytest.mark.parametrize("teams", [4, 60])
def test_board_page_query_budget(client, build, teams, django_assert_max_num_queries):
    seed(build, teams, per_team=1)
    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get(reverse("leaderboard:board", args=[build.track.slug]))
    assert response.status_code == 200 and response.content.decode().count('class="board-row') == min(teams, 50)
