from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from portal import selectors, services
from portal.errors import NotFound, ServiceError
from portal.forms import InviteEmailForm, TeamCreateForm
from portal.models import Challenge, Team
from portal.views.base import run_action, service_errors

NEW_LINK_SESSION_KEY = "portal_new_invite_link"


def _challenge() -> Challenge:
    challenge = selectors.challenge_current()
    if challenge is None:
        raise NotFound("There is no challenge yet.")
    return challenge


def _team(slug: str) -> Team:
    return selectors.team_get(challenge=_challenge(), slug=slug)


def _member(team: Team, user_id: int):
    user = get_user_model().objects.filter(pk=user_id, memberships__team=team).first()
    if user is None:
        raise NotFound("That person is not a member of this team.")
    return user


@login_required
@service_errors
def my_team(request: HttpRequest) -> HttpResponse:
    challenge = _challenge()
    team = selectors.team_of_user(request.user, challenge)
    if team is not None:
        return redirect("team_detail", slug=team.slug)
    return render(
        request,
        "portal/team_none.html",
        {
            "challenge": challenge,
            "form": TeamCreateForm(),
            "invitations": selectors.invitations_for_user(request.user),
            "teams_closed": challenge.is_past_deadline() and not request.user.is_staff,
        },
    )


@login_required
@require_POST
@service_errors
def team_create(request: HttpRequest) -> HttpResponse:
    challenge = _challenge()
    form = TeamCreateForm(request.POST)
    if form.is_valid():
        try:
            team = services.team_create(user=request.user, challenge=challenge, name=form.cleaned_data["name"])
        except ServiceError as error:
            form.add_error("name" if error.field == "name" else None, error.message)
        else:
            messages.success(request, f"Team {team.name} is created. Invite your teammates below.")
            return redirect("team_detail", slug=team.slug)
    return render(
        request,
        "portal/team_none.html",
        {"challenge": challenge, "form": form, "invitations": selectors.invitations_for_user(request.user)},
        status=400,
    )


@service_errors
def team_detail(request: HttpRequest, slug: str) -> HttpResponse:
    team = _team(slug)
    members = list(team.memberships.all())
    is_member = request.user.is_authenticated and any(m.user_id == request.user.pk for m in members)
    can_manage = selectors.team_can_manage(request.user, team)
    show_private = is_member or (request.user.is_authenticated and request.user.is_staff)
    context = {
        "team": team,
        "challenge": team.challenge,
        "members": members,
        "is_member": is_member,
        "can_manage": can_manage,
        "show_private": show_private,
        "teams_closed": team.challenge.is_past_deadline()
        and not (request.user.is_authenticated and request.user.is_staff),
        "room_left": max(team.challenge.max_team_size - len(members), 0),
        # Other apps include their team sections when this flag is on (see the template's marked slot).
        "show_team_submissions": show_private,
    }
    if show_private:
        # The evaluation app owns submissions; the team page shows its section.
        from evaluation.views import team_submissions_context

        context.update(team_submissions_context(team))
        context.update(
            eligibility=selectors.team_student_eligibility(team),
            pending_invitations=selectors.team_pending_invitations(team) if can_manage else [],
            invite_form=InviteEmailForm(),
            new_invite_link=request.session.pop(NEW_LINK_SESSION_KEY, None),
            audit_events=selectors.audit_events_for_team(team, limit=15),
        )
    return render(request, "portal/team_detail.html", context)


@login_required
@require_POST
@service_errors
def team_invite(request: HttpRequest, slug: str) -> HttpResponse:
    team = _team(slug)
    form = InviteEmailForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter a valid e-mail address.")
        return redirect("team_detail", slug=slug)
    email = form.cleaned_data["email"]
    return run_action(
        request,
        lambda: services.invitation_create(
            actor=request.user, team=team, email=email, site_url=request.build_absolute_uri("/")
        ),
        success=f"Invitation sent to {email}.",
        back="team_detail",
        slug=slug,
    )


@login_required
@require_POST
@service_errors
def team_invite_link(request: HttpRequest, slug: str) -> HttpResponse:
    team = _team(slug)
    try:
        _, token = services.invitation_create(actor=request.user, team=team)
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        # Only the hash is stored, so the link can be shown this once.
        request.session[NEW_LINK_SESSION_KEY] = request.build_absolute_uri(reverse("invitation_detail", args=[token]))
    return redirect("team_detail", slug=slug)


@login_required
@require_POST
@service_errors
def team_invite_revoke(request: HttpRequest, slug: str, invitation_id: int) -> HttpResponse:
    team = _team(slug)
    invitation = team.invitations.filter(pk=invitation_id).first()
    if invitation is None:
        raise NotFound("No such invitation.")
    return run_action(
        request,
        lambda: services.invitation_revoke(actor=request.user, invitation=invitation),
        success="Invitation withdrawn.",
        back="team_detail",
        slug=slug,
    )


@login_required
@require_POST
@service_errors
def team_leave(request: HttpRequest, slug: str) -> HttpResponse:
    team = _team(slug)
    try:
        remaining = services.team_leave(user=request.user, team=team)
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect("team_detail", slug=slug)
    messages.success(request, f"You left {team.name}." if remaining else f"Team {team.name} is dissolved.")
    return redirect("my_team")


@login_required
@require_POST
@service_errors
def team_member_remove(request: HttpRequest, slug: str, user_id: int) -> HttpResponse:
    team = _team(slug)
    user = _member(team, user_id)
    return run_action(
        request,
        lambda: services.team_member_remove(actor=request.user, team=team, user=user),
        success=f"{user.profile.name} is no longer in the team.",
        back="team_detail",
        slug=slug,
    )


@login_required
@require_POST
@service_errors
def team_captain(request: HttpRequest, slug: str, user_id: int) -> HttpResponse:
    team = _team(slug)
    user = _member(team, user_id)
    return run_action(
        request,
        lambda: services.team_captain_transfer(actor=request.user, team=team, new_captain=user),
        success=f"{user.profile.name} is now the captain.",
        back="team_detail",
        slug=slug,
    )
