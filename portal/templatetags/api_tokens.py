"""`{% load api_tokens %}{% api_tokens_section %}` renders the API tokens section inside the profile page."""

from django import template

from portal.api.pages import api_tokens_context

register = template.Library()


@register.inclusion_tag("portal/partials/api_tokens.html", takes_context=True)
def api_tokens_section(context) -> dict:
    request = context["request"]
    return {**api_tokens_context(request.user), "request": request, "csrf_token": context.get("csrf_token")}
