from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from portal import selectors, services
from portal.errors import ServiceError
from portal.models import Invitation
from portal.views.base import service_errors


def _respond(request: HttpRequest, invitation: Invitation, answer: str, back: str, **back_kwargs) -> HttpResponse:
    try:
        if answer == "accept":
            services.invitation_accept(user=request.user, invitation=invitation)
        elif answer == "decline":
            services.invitation_decline(user=request.user, invitation=invitation)
        else:
            messages.error(request, "Choose accept or decline.")
            return redirect(back, **back_kwargs)
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect(back, **back_kwargs)
    if answer == "accept":
        messages.success(request, f"Welcome to {invitation.team.name}!")
        return redirect("team_detail", slug=invitation.team.slug)
    messages.info(request, f"You declined the invitation to {invitation.team.name}.")
    return redirect("invitations")


@login_required
def invitations(request: HttpRequest) -> HttpResponse:
    challenge = selectors.challenge_current()
    return render(
        request,
        "portal/invitations.html",
        {
            "invitations": selectors.invitations_for_user(request.user),
            "team": selectors.team_of_user(request.user, challenge),
        },
    )


@login_required
@require_POST
@service_errors
def invitation_respond(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation = selectors.invitation_for_user(request.user, invitation_id)
    return _respond(request, invitation, request.POST.get("answer", ""), "invitations")


@service_errors
def invitation_detail(request: HttpRequest, token: str) -> HttpResponse:
    """The page an invitation link opens. Anyone may look; answering needs an account."""
    invitation = selectors.invitation_by_token(token)
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return _respond(request, invitation, request.POST.get("answer", ""), "invitation_detail", token=token)
    current_team = selectors.team_of_user(request.user, invitation.team.challenge)
    return render(
        request,
        "portal/invitation_detail.html",
        {
            "invitation": invitation,
            "team": invitation.team,
            "members": invitation.team.memberships.select_related("user__profile"),
            "current_team": current_team,
            "usable": invitation.status == Invitation.Status.PENDING and not invitation.is_expired(),
        },
    )
