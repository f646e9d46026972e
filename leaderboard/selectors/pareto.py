"""Accuracy-against-compute data of one track: one point per ranked team entry, and its frontier."""

from typing import Any

from django.urls import reverse

from portal.models import Track

from ..columns import PARETO_X, pareto_y_options
from ..models import Standing
from ..pareto import pareto_frontier
from .board import Viewer, snapshot_current


def pareto_axes(viewer: Viewer) -> tuple[dict[str, str], dict[str, str]]:
    return PARETO_X, pareto_y_options(hidden_visible=viewer.hidden_visible)


def pareto_data(*, track: Track, viewer: Viewer, x: str = "", y: str = "") -> dict[str, Any]:
    """{x, y, x_label, y_label, points: [{submission_id, team, x, y, rank, on_frontier, url}],
    frontier: [submission ids by increasing x]}. Unknown axes fall back to the defaults; an axis
    that needs the hidden suite is refused while it is not visible to the viewer."""
    x_options, y_options = pareto_axes(viewer)
    x = x if x in x_options else "eval_gpu_seconds"
    y = y if y in y_options else next(iter(y_options))
    rank_field = "rank" if viewer.hidden_visible else "open_rank"
    snapshot = snapshot_current(track)
    rows = []
    if snapshot is not None:
        rows = list(
            Standing.objects.filter(snapshot=snapshot, is_team_entry=True, **{f"{rank_field}__isnull": False})
            .order_by(rank_field)
            .values_list("submission_id", "team__name", x, y, rank_field, "base_model_name")
        )
    points = [
        {"id": sid, "team": team, "x": xv, "y": yv, "rank": rank, "base_model": base}
        for sid, team, xv, yv, rank, base in rows
    ]
    frontier = pareto_frontier(points)
    on_frontier = set(frontier)
    url = reverse("leaderboard:analysis", args=[track.slug, 0]).rsplit("/0/", 1)[0]
    return {
        "track": track.slug,
        "x": x,
        "y": y,
        "x_label": x_options[x],
        "y_label": y_options[y],
        "x_options": x_options,
        "y_options": y_options,
        "points": [
            {
                "submission_id": p["id"],
                "team": p["team"],
                "x": p["x"],
                "y": p["y"],
                "rank": p["rank"],
                "base_model": p["base_model"],
                "on_frontier": p["id"] in on_frontier,
                "url": f"{url}/{p['id']}/",
            }
            for p in points
        ],
        "frontier": frontier,
    }
