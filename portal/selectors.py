"""Every read the portal's pages need, and the one student-award eligibility rule."""

from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from portal.errors import NotFound, PermissionDenied
from portal.models import AuditEvent, Challenge, Invitation, Membership, Profile, Team, Track


@dataclass(frozen=True)
class Eligibility:
    """Whether a team may win a student award, and what stands in the way."""

    eligible: bool
    verified: int
    total: int
    missing_members: list[Profile] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.verified} of {self.total} member{'s' if self.total != 1 else ''} verified"


def team_student_eligibility(team: Team) -> Eligibility:
    """THE rule: a team is eligible for student awards iff it has members and every one is a verified student.

    `Team.objects.with_eligibility()` computes the same for many teams in one query (a test keeps them equal).
    """
    profiles = [
        m.user.profile
        for m in Membership.objects.filter(team=team).select_related("user__profile").order_by("joined_at", "pk")
    ]
    verified = [p for p in profiles if p.student_status == Profile.StudentStatus.VERIFIED]
    missing = [p for p in profiles if p.student_status != Profile.StudentStatus.VERIFIED]
    return Eligibility(
        eligible=bool(profiles) and not missing, verified=len(verified), total=len(profiles), missing_members=missing
    )


def challenge_current() -> Challenge | None:
    return Challenge.objects.current()


def challenge_tracks(challenge: Challenge) -> QuerySet[Track]:
    return challenge.tracks.prefetch_related("prizes").order_by("order", "id")


def team_of_user(user: AbstractBaseUser, challenge: Challenge | None) -> Team | None:
    if challenge is None or not user.is_authenticated:
        return None
    membership = Membership.objects.filter(user=user, challenge=challenge).select_related("team").first()
    return membership.team if membership else None


def team_get(*, challenge: Challenge, slug: str) -> Team:
    team = (
        Team.objects.filter(challenge=challenge, slug=slug)
        .with_eligibility()
        .select_related("captain__profile", "challenge")
        .prefetch_related(
            Prefetch("memberships", queryset=Membership.objects.select_related("user__profile").order_by("joined_at"))
        )
        .first()
    )
    if team is None:
        raise NotFound("No such team.")
    return team


def team_member_ids(team: Team) -> set[int]:
    return {m.user_id for m in team.memberships.all()}


def team_can_manage(user: AbstractBaseUser, team: Team) -> bool:
    return user.is_authenticated and (user.pk == team.captain_id or user.is_staff)


def team_pending_invitations(team: Team) -> QuerySet[Invitation]:
    return team.invitations.filter(status=Invitation.Status.PENDING, expires_at__gt=timezone.now()).select_related(
        "invited_by__profile"
    )


def invitations_for_user(user: AbstractBaseUser) -> QuerySet[Invitation]:
    """Pending, unexpired e-mail invitations addressed to any address the user has verified."""
    from allauth.account.models import EmailAddress

    emails = list(EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True))
    query = Q()
    for email in emails:
        query |= Q(email__iexact=email)
    if not emails:
        return Invitation.objects.none()
    return (
        Invitation.objects.filter(query, status=Invitation.Status.PENDING, expires_at__gt=timezone.now())
        .select_related("team", "team__challenge", "invited_by__profile")
        .order_by("-created_at")
    )


def invitation_for_user(user: AbstractBaseUser, invitation_id: int) -> Invitation:
    invitation = invitations_for_user(user).filter(pk=invitation_id).first()
    if invitation is None:
        raise NotFound("That invitation is not open to you any more.")
    return invitation


def invitation_by_token(token: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("team", "team__challenge", "invited_by__profile")
        .filter(token_hash=Invitation.hash_token(token or ""))
        .first()
    )
    if invitation is None:
        raise NotFound("This invitation link is not valid. Ask the team's captain for a new one.", code="bad_token")
    return invitation


def evidence_profile_for(user: AbstractBaseUser, profile_id: int) -> Profile:
    """The profile whose evidence `user` may read: their own, or anyone's for organizers."""
    profile = Profile.objects.select_related("user").filter(pk=profile_id).first()
    if profile is None or not profile.student_evidence:
        raise NotFound("No evidence here.")
    if profile.user_id != user.pk and not user.is_staff:
        raise PermissionDenied("Only the participant and the organizers can see this file.")
    return profile


def audit_events_for_team(team: Team, limit: int = 20) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(team=team).select_related("actor__profile", "subject_user__profile")[:limit]
