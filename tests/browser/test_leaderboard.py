"""The leaderboard in a real browser: sorting, revealing the hidden suite, the Pareto plot.

Screenshots of every page at desktop and phone widths go to $LEADERBOARD_SCREENSHOTS (if set)."""

import os
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from tests.leaderboard.conftest import Builder, _empty_cache, build, organizer  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = os.environ.get("LEADERBOARD_SCREENSHOTS")


@pytest.fixture
def board(build):  # noqa: F811
    """Eight teams with different trade-offs of score against compute."""
    for i, (open_acc, hidden_acc, gpu) in enumerate(
        [
            (0.9, 0.3, 900),
            (0.8, 0.9, 400),
            (0.7, 0.5, 200),
            (0.6, 0.6, 150),
            (0.5, 0.2, 100),
            (0.4, 0.7, 700),
            (0.3, 0.1, 60),
            (0.2, 0.4, 300),
        ]
    ):
        team = build.team(f"Team {chr(65 + i)}", students=i % 3 == 0)
        build.entry(team, open_acc, hidden_acc, gpu=gpu, base="tiny-llama" if i % 2 else "tiny-gpt2")
    build.recompute()
    return build


def page_for(browser, width=1400, height=900, user=None, live_server=None):
    context = browser.new_context(viewport={"width": width, "height": height})
    if user is not None:
        client = Client()
        client.force_login(user)
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    return context.new_page()


def shoot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


def column(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        "tr.board-row", f"rows => rows.map(r => r.querySelectorAll('td')[{index}].innerText.replace('▸', '').trim())"
    )


def json_teams(slug: str, **params) -> list[str]:
    data = Client().get(reverse("leaderboard:board_json", args=[slug]), params).json()
    return [r["team"] for r in data["results"]]


def test_sort_the_board(browser, live_server, board):
    page = page_for(browser)
    page.goto(live_server.url + reverse("leaderboard:board", args=[board.track.slug]))
    # Ranked by the open-suite score before the reveal, as the JSON says.
    assert [t.split(" student")[0].strip() for t in column(page, 1)] == json_teams(board.track.slug)
    shoot(page, "board-desktop")

    page.click("th a[data-sort='eval_gpu_seconds']")
    page.wait_for_url("**sort=eval_gpu_seconds**")
    page.wait_for_selector("th.sorted a[data-sort='eval_gpu_seconds']")
    assert column(page, 1)[0].startswith("Team G")  # 60 GPU-seconds: the cheapest
    page.click("th a[data-sort='eval_gpu_seconds']")
    page.wait_for_url("**sort=-eval_gpu_seconds**")
    page.wait_for_selector("th.sorted[aria-sort='descending']")
    assert column(page, 1)[0].startswith("Team A")  # 900 GPU-seconds

    page.click("th a[data-sort='team']")
    page.wait_for_url("**sort=team**")
    page.wait_for_selector("th.sorted a[data-sort='team']")
    names = [n.split()[1] for n in column(page, 1)]
    assert names == sorted(names)

    page.check("#student-only")
    page.wait_for_url("**student=1**")
    page.wait_for_function("document.querySelectorAll('tr.board-row').length === 3")
    page.click("tr.board-row .expand")
    page.wait_for_selector(".breakdown-row.show .breakdown-table")  # loaded on expand
    assert "mmlu" in page.inner_text(".breakdown-row.show")

    phone = page_for(browser, 390, 844)
    phone.goto(live_server.url + reverse("leaderboard:board", args=[board.track.slug]))
    phone.wait_for_selector("#pareto-plot[data-rendered='1']")
    shoot(phone, "board-phone")
    page.context.close()
    phone.context.close()


def test_an_organizer_reveals_the_hidden_suite(browser, live_server, board, organizer):  # noqa: F811
    url = live_server.url + reverse("leaderboard:board", args=[board.track.slug])
    public = page_for(browser)
    public.goto(url)
    assert public.locator("th a[data-sort='hidden_score']").count() == 0
    assert "Hidden-suite results stay hidden" in public.inner_text(".rule-box")

    page = page_for(browser, user=organizer, live_server=live_server)
    page.goto(url)
    assert page.locator("th a[data-sort='hidden_score']").count() == 1  # organizers see it already
    shoot(page, "board-organizer")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#reveal-hidden")
    page.wait_for_selector(".alert-success")
    assert "now public" in page.inner_text(".alert-success")
    assert page.locator("#reveal-hidden").count() == 0

    public.goto(url)
    assert public.locator("th a[data-sort='hidden_score']").count() == 1
    revealed = json_teams(board.track.slug)
    assert [t.split(" student")[0].strip() for t in column(public, 1)] == revealed
    assert public.locator(".awards-card .award-place").count() == 3
    shoot(public, "board-revealed")
    page.context.close()
    public.context.close()


def test_the_pareto_plot_has_one_point_per_entry_and_the_frontier_highlighted(browser, live_server, board):
    client = Client()
    data = client.get(reverse("leaderboard:pareto_json", args=[board.track.slug])).json()
    page = page_for(browser)
    page.goto(live_server.url + reverse("leaderboard:pareto", args=[board.track.slug]))
    page.wait_for_selector("#pareto-plot[data-rendered='1']")
    traces = page.evaluate(
        "() => document.getElementById('pareto-plot').data.map(t => ({name: t.name, n: t.x.length, mode: t.mode, color: t.marker.color}))"
    )
    by_name = {t["name"]: t for t in traces}
    assert by_name["Entries"]["n"] + by_name["Pareto frontier"]["n"] == len(data["points"]) == 8
    assert by_name["Pareto frontier"]["n"] == len(data["frontier"]) >= 2
    assert by_name["Pareto frontier"]["mode"] == "lines+markers" and by_name["Pareto frontier"]["color"] == "#e8590c"
    assert page.locator("#pareto-plot .scatterlayer .point").count() == 8
    shoot(page, "pareto-desktop")

    page.select_option("#pareto-x", "finetune_gpu_hours")
    page.wait_for_function("document.getElementById('pareto-plot').layout.xaxis.title.text.startsWith('Fine-tuning')")
    page.uncheck("#pareto-logx")
    page.wait_for_function("document.getElementById('pareto-plot').layout.xaxis.type === 'linear'")

    page.locator("#pareto-plot .scatterlayer .point").first.click(force=True)
    page.wait_for_url("**/submissions/**")
    assert "Aspects against the track" in page.content()
    shoot(page, "analysis-desktop")
    phone = page_for(browser, 390, 844)
    phone.goto(page.url)
    phone.wait_for_selector("#pareto-plot[data-rendered='1']")
    shoot(phone, "analysis-phone")
    page.context.close()
    phone.context.close()
