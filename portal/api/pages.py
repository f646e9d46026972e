"""The API tokens section of the profile page: list, create (secret shown once), revoke."""

from datetime import timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from portal.api.selectors import api_token_list
from portal.api.services import api_token_create, api_token_revoke
from portal.errors import ServiceError

EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "Never")]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="e.g. the machine you train on")
    expires_in_days = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, initial="90", label="Expires in")


def api_tokens_context(user, *, form: ApiTokenForm | None = None, new_secret: str | None = None) -> dict:
    return {
        "api_tokens": list(api_token_list(user=user)),
        "api_token_form": form or ApiTokenForm(),
        "new_api_token_secret": new_secret,
    }


def _render(request, context: dict, status: int = 200):
    template = "portal/partials/api_tokens.html" if request.headers.get("HX-Request") else "portal/api_tokens.html"
    return render(request, template, context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request):
    if request.method == "GET":
        return _render(request, api_tokens_context(request.user))
    form = ApiTokenForm(request.POST)
    if form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        expires_at = timezone.now() + timedelta(days=int(days)) if days else None
        try:
            _, secret = api_token_create(user=request.user, name=form.cleaned_data["name"], expires_at=expires_at)
        except ServiceError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            # Rendered, not redirected: the secret must never sit in a session or cookie.
            return _render(request, api_tokens_context(request.user, new_secret=secret))
    return _render(request, api_tokens_context(request.user, form=form), status=400)


@login_required
@require_POST
def api_token_revoke_view(request, token_id: int):
    try:
        api_token_revoke(user=request.user, token_id=token_id)
    except ServiceError:
        pass  # Not the user's token: nothing to reveal, the list shows the truth.
    if request.headers.get("HX-Request"):
        return _render(request, api_tokens_context(request.user))
    return redirect("api_tokens")
