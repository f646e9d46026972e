from django import template

register = template.Library()


@register.filter
def seconds(value) -> str:
    """12345 → "3 h 25 min"; 75 → "1 min 15 s"."""
    if value is None or value == "":
        return "—"
    total = int(float(value))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
