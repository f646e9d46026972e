"""Small presentation helpers for the portal's templates."""

from datetime import UTC, datetime

from django import template
from django.template import TemplateDoesNotExist
from django.template.loader import get_template
from django.utils.html import format_html

from portal.models import AOE_TIMEZONE, Challenge

register = template.Library()


@register.filter
def usd(amount: int | None) -> str:
    return "" if amount is None else f"${amount:,}"


@register.filter
def in_challenge_tz(value: datetime | None, challenge: Challenge | None) -> str:
    """A date as the challenge judges it, e.g. "Sat 30 Sep 2023, 23:59 AoE"."""
    if value is None or challenge is None:
        return ""
    local = value.astimezone(challenge.tz)
    zone = "AoE" if challenge.timezone == AOE_TIMEZONE else challenge.timezone
    return f"{local:%a %-d %b %Y, %H:%M} {zone}"


@register.simple_tag
def local_time(value: datetime | None, css: str = "") -> str:
    """A <time> that static/js/dates.js rewrites in the visitor's own timezone (UTC until it runs)."""
    if value is None:
        return ""
    return format_html(
        '<time data-local datetime="{}" class="{}">{} UTC</time>',
        value.isoformat(),
        css,
        value.astimezone(UTC).strftime("%a %-d %b %Y, %H:%M"),
    )


@register.filter
def ordinal_place(place: int | None) -> str:
    if place is None:
        return ""
    suffix = "th" if 10 <= place % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"


@register.simple_tag(takes_context=True)
def include_if_exists(context, template_name: str) -> str:
    """Render another app's partial with this page's context, or nothing while that app has not built it."""
    try:
        tpl = get_template(template_name)
    except TemplateDoesNotExist:
        return ""
    return tpl.render(context.flatten(), context.get("request"))


@register.filter
def initials(name: str) -> str:
    parts = [p for p in (name or "?").replace("@", " ").replace(".", " ").split() if p]
    return "".join(p[0] for p in parts[:2]).upper() or "?"


@register.filter
def bs_widget(field, css: str = "form-control") -> str:
    """Render a bound field's own widget (keeping its attributes) with Bootstrap classes."""
    classes = css + (" is-invalid" if field.errors else "")
    return field.as_widget(attrs={"class": classes})


@register.filter
def country_name(code: str) -> str:
    from django_countries.data import COUNTRIES

    return str(COUNTRIES.get((code or "").upper(), code or ""))
