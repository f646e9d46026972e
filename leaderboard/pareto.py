"""The accuracy-against-compute frontier, on plain data (no Django)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any


def pareto_frontier(points: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Ids of the non-dominated points, by increasing x.

    Points are {id, x, y}: x is compute (lower is better), y is a score (higher is better). A point
    is dominated when another has x <= and y >= with at least one strict. So, of points with equal
    x only the highest y can be on the frontier; exact duplicates do not dominate each other and are
    all on it (ordered by id). Points with a missing or non-finite coordinate are left out.
    """
    usable = [
        p
        for p in points
        if p.get("x") is not None and p.get("y") is not None and math.isfinite(p["x"]) and math.isfinite(p["y"])
    ]
    try:
        usable.sort(key=lambda p: p["id"])
    except TypeError:  # mixed id types: any stable order will do
        usable.sort(key=lambda p: str(p["id"]))
    # Lowest x first; within one x the best y first, so a lower y at the same x is seen as dominated.
    usable.sort(key=lambda p: (p["x"], -p["y"]))
    frontier: list[Any] = []
    best: tuple[float, float] | None = None
    for p in usable:
        if best is None or p["y"] > best[1]:
            frontier.append(p["id"])
            best = (p["x"], p["y"])
        elif (p["x"], p["y"]) == best:
            frontier.append(p["id"])
    return frontier
