"""Who may see and do what: the one place for object-level rules, used by the API, pages and selectors.

Organizers are staff users. A team's private data (members' e-mails, invitations, submissions, logs) is for
its members and organizers; evidence files for their owner and organizers; hidden-suite scenario names,
prompts and instances for organizers only. Who sees hidden-suite scores and ranks is the leaderboard's rule
(`leaderboard.selectors.viewer_for`), shared by its pages and the API.
"""

from django.db.models import QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission

from portal.models import Challenge, Membership, Profile, Team


def is_organizer(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def membership_of(user, challenge: Challenge | int | None) -> Membership | None:
    if not (user and user.is_authenticated) or challenge is None:
        return None
    challenge_id = challenge.pk if isinstance(challenge, Challenge) else challenge
    return Membership.objects.select_related("team").filter(user=user, challenge_id=challenge_id).first()


def is_team_member(user, team: Team | None) -> bool:
    if team is None or not (user and user.is_authenticated):
        return False
    return Membership.objects.filter(user=user, team=team).exists()


def is_captain(user, team: Team | None) -> bool:
    return bool(team is not None and user and user.is_authenticated and team.captain_id == user.pk)


def can_view_team_private(user, team: Team | None) -> bool:
    """Members' contacts, invitations, submissions and eligibility details."""
    return is_organizer(user) or is_team_member(user, team)


def can_manage_team(user, team: Team | None) -> bool:
    """Invite, revoke invitations, remove members, hand over captaincy (the services add the deadline rule)."""
    return is_organizer(user) or is_captain(user, team)


def can_view_submission(user, submission) -> bool:
    return is_organizer(user) or is_team_member(user, submission.team)


def can_act_on_submission(user, submission) -> bool:
    """Cancel it or choose it as final entry: any member of its team."""
    return is_team_member(user, submission.team) or is_organizer(user)


def can_view_evidence(user, profile: Profile) -> bool:
    return is_organizer(user) or bool(user and user.is_authenticated and profile.user_id == user.pk)


def can_see_hidden_details(user) -> bool:
    """Hidden-suite scenario names, prompts and instances: never shown to participants."""
    return is_organizer(user)


def teams_visible_privately(user, queryset: QuerySet[Team]) -> QuerySet[Team]:
    if is_organizer(user):
        return queryset
    if not (user and user.is_authenticated):
        return queryset.none()
    return queryset.filter(memberships__user=user)


def submissions_visible_to(user, queryset: QuerySet) -> QuerySet:
    """A submission queryset narrowed to what `user` may see (its team's, or all for organizers)."""
    if is_organizer(user):
        return queryset
    if not (user and user.is_authenticated):
        return queryset.none()
    return queryset.filter(team__memberships__user=user)


# DRF permission classes built on the predicates above.


class IsOrganizer(BasePermission):
    message = "Only organizers may do this."

    def has_permission(self, request, view) -> bool:
        return is_organizer(request.user)


class ReadOnly(BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.method in SAFE_METHODS


class CanViewSubmission(BasePermission):
    """Object-level: hides other teams' submissions (the selectors answer 404 before this is reached)."""

    def has_object_permission(self, request, view, obj) -> bool:
        return can_view_submission(request.user, obj)


class CanActOnSubmission(BasePermission):
    message = "Only members of the submission's team may do this."

    def has_object_permission(self, request, view, obj) -> bool:
        return can_act_on_submission(request.user, obj)


class IsTeamCaptain(BasePermission):
    message = "Only the team's captain may do this."

    def has_object_permission(self, request, view, obj) -> bool:
        return can_manage_team(request.user, obj)


def public_name(profile: Profile | None) -> str:
    """The name shown to people outside the team: never the e-mail address that Profile.name falls back to."""
    if profile is None:
        return "A participant"
    return profile.display_name or f"Participant {profile.user_id}"
