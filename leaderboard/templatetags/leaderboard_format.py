"""Number formats and sort links of the leaderboard pages."""

import math

from django import template

register = template.Library()

DASH = "—"


def _missing(value) -> bool:
    """Anything that is not a finite number shows as a dash (a filter never breaks a page)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return not math.isfinite(value)


@register.filter
def score(value, digits: int = 3) -> str:
    return DASH if _missing(value) else f"{value:.{int(digits)}f}"


@register.filter
def drop(value, digits: int = 3) -> str:
    """How much a metric falls under a perturbation, as a signed change: −0.067, +0.010, or 0.000."""
    if _missing(value):
        return DASH
    rounded = round(float(value), int(digits))
    if rounded == 0:
        return f"{0:.{int(digits)}f}"
    return f"{'−' if rounded > 0 else '+'}{abs(rounded):.{int(digits)}f}"


@register.filter
def number(value, digits: int = 1) -> str:
    if _missing(value):
        return DASH
    return f"{value:,.{int(digits)}f}"


@register.filter
def gpu_seconds(value) -> str:
    if _missing(value):
        return DASH
    if value >= 3600:
        return f"{value / 3600:,.1f} h"
    if value >= 60:
        return f"{value / 60:,.1f} min"
    return f"{value:,.1f} s"


@register.filter
def memory(value) -> str:
    if _missing(value):
        return DASH
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{int(value)} B"


@register.filter
def params(value) -> str:
    if _missing(value):
        return DASH
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.1f}{unit}"
    return str(int(value))


@register.filter
def dict_get(mapping, key):
    return (mapping or {}).get(key)


@register.filter
def percent_bar(value) -> int:
    """Width (0-100) of a score bar."""
    return 0 if _missing(value) else max(0, min(100, round(value * 100)))


@register.simple_tag(takes_context=True)
def query(context, **changes) -> str:
    """The current query string with `changes` applied (None or "" removes a key); page resets
    unless it is changed explicitly."""
    params = context["request"].GET.copy()
    if "page" not in changes:
        params.pop("page", None)
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.simple_tag(takes_context=True)
def sort_query(context, key: str) -> str:
    """Clicking a header sorts by its natural direction (best first); clicking again reverses."""
    board = context["board"]
    column = board.columns[key]
    natural = f"-{key}" if column.descending else key
    if board.sort_key == key:
        target = key if board.sort.startswith("-") else f"-{key}"
    else:
        target = natural
    return query(context, sort=target)
