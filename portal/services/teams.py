"""Teams, memberships and invitations. Every rule about who may join or change a team lives here."""

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from portal.errors import Conflict, NotFound, PermissionDenied, ServiceError
from portal.models import Challenge, Invitation, Membership, Team
from portal.services.audit import audit_record
from portal.services.standings import standings_refresh_eligibility

User = AbstractBaseUser


def _is_organizer(user: User) -> bool:
    return bool(getattr(user, "is_staff", False))


def _format_deadline(challenge: Challenge) -> str:
    when = challenge.submission_deadline.astimezone(challenge.tz)
    return f"{when:%d %b %Y, %H:%M} {challenge.timezone_label}"


def _require_teams_open(actor: User, challenge: Challenge) -> None:
    if challenge.is_past_deadline() and not _is_organizer(actor):
        raise ServiceError(
            f"The submission deadline ({_format_deadline(challenge)}) has passed: only organizers change teams now.",
            code="deadline_passed",
        )


def _require_captain(actor: User, team: Team) -> None:
    if team.captain_id != actor.pk and not _is_organizer(actor):
        raise PermissionDenied("Only the team's captain can do that.")


def _user_emails(user: User) -> set[str]:
    """The addresses a user has proven they own (plus the account's own address)."""
    from allauth.account.models import EmailAddress

    emails = {e.lower() for e in EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True)}
    if user.email:
        emails.add(user.email.lower())
    return emails


def _unique_slug(challenge: Challenge, name: str) -> str:
    base = (slugify(name) or "team")[:80]
    slug, n = base, 2
    while Team.objects.filter(challenge=challenge, slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def team_name_clean(name: str) -> str:
    name = " ".join((name or "").split())
    if len(name) < 2:
        raise ServiceError("A team name needs at least 2 characters.", field="name", code="name_too_short")
    if len(name) > 80:
        raise ServiceError("A team name has at most 80 characters.", field="name", code="name_too_long")
    return name


def team_create(*, user: User, challenge: Challenge, name: str) -> Team:
    """Create a team with `user` as captain and only member."""
    name = team_name_clean(name)
    _require_teams_open(user, challenge)
    if Membership.objects.filter(user=user, challenge=challenge).exists():
        raise Conflict("You are already in a team for this challenge: leave it first.", code="already_in_team")
    if Team.objects.filter(challenge=challenge, name__iexact=name).exists():
        raise Conflict(f"A team called “{name}” already exists (names ignore case).", field="name", code="name_taken")
    try:
        with transaction.atomic():
            team = Team.objects.create(challenge=challenge, name=name, slug=_unique_slug(challenge, name), captain=user)
            Membership.objects.create(team=team, user=user, challenge=challenge)
            audit_record(actor=user, action="team.created", subject_user=user, team=team, obj=team)
    except IntegrityError:
        # A concurrent request won the race for the name or for this user's one team.
        if Membership.objects.filter(user=user, challenge=challenge).exists():
            raise Conflict("You are already in a team for this challenge: leave it first.", code="already_in_team")
        raise Conflict(f"A team called “{name}” already exists (names ignore case).", field="name", code="name_taken")
    return team


def _require_room(team: Team, challenge: Challenge) -> None:
    if team.memberships.count() >= challenge.max_team_size:
        raise Conflict(f"The team is full: at most {challenge.max_team_size} members.", code="team_full")


def _send_invitation_email(invitation: Invitation, token: str, site_url: str) -> None:
    url = site_url.rstrip("/") + reverse("invitation_detail", args=[token])
    context = {"invitation": invitation, "team": invitation.team, "url": url}
    send_mail(
        subject=f"You are invited to join {invitation.team.name}",
        message=render_to_string("portal/email/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_create(
    *, actor: User, team: Team, email: str = "", site_url: str | None = None
) -> tuple[Invitation, str]:
    """Invite by e-mail (`email` set) or create a single-use link. Returns the invitation and its token.

    The token is returned once and only its hash is stored: a leaked database does not leak invitations.
    """
    email = (email or "").strip().lower()
    with transaction.atomic():
        team = Team.objects.select_for_update().select_related("challenge").get(pk=team.pk)
        challenge = team.challenge
        _require_captain(actor, team)
        _require_teams_open(actor, challenge)
        _require_room(team, challenge)
        if email:
            member = Membership.objects.filter(challenge=challenge, user__email__iexact=email).select_related("team")
            member = member.first()
            if member is not None:
                where = "your team" if member.team_id == team.pk else "another team"
                raise Conflict(f"{email} is already a member of {where}.", field="email", code="already_in_team")
            # Inviting the same address again replaces the earlier invitation (a fresh link and expiry).
            Invitation.objects.filter(team=team, email__iexact=email, status=Invitation.Status.PENDING).update(
                status=Invitation.Status.REVOKED, responded_at=timezone.now()
            )
        token, token_hash = Invitation.new_token()
        invitation = Invitation.objects.create(
            team=team,
            email=email,
            token_hash=token_hash,
            invited_by=actor,
            expires_at=timezone.now() + settings.INVITATION_LINK_TTL,
        )
        audit_record(
            actor=actor,
            action="invitation.created",
            team=team,
            obj=invitation,
            data={"email": email} if email else {"link": True},
        )
        if email:
            base = site_url or settings.SITE_URL
            transaction.on_commit(lambda: _send_invitation_email(invitation, token, base))
    return invitation, token


def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().select_related("team").get(pk=invitation.pk)
        _require_captain(actor, invitation.team)
        if invitation.status != Invitation.Status.PENDING:
            raise ServiceError("Only a pending invitation can be revoked.", code="not_pending")
        invitation.status = Invitation.Status.REVOKED
        invitation.responded_by = actor
        invitation.responded_at = timezone.now()
        invitation.save(update_fields=["status", "responded_by", "responded_at"])
        audit_record(actor=actor, action="invitation.revoked", team=invitation.team, obj=invitation)
    return invitation


def _require_usable(invitation: Invitation, user: User) -> None:
    if invitation.status == Invitation.Status.ACCEPTED:
        raise Conflict("This invitation has already been used. Ask the team's captain for a new one.", code="used")
    if invitation.status == Invitation.Status.DECLINED:
        raise Conflict("This invitation was declined.", code="declined")
    if invitation.status == Invitation.Status.REVOKED:
        raise Conflict("The captain withdrew this invitation.", code="revoked")
    if invitation.is_expired():
        raise Conflict("This invitation has expired. Ask the team's captain for a new one.", code="expired")
    if invitation.email and invitation.email.lower() not in _user_emails(user):
        raise PermissionDenied(
            f"This invitation was sent to {invitation.email}. Log in with that address to answer it.",
            code="wrong_recipient",
        )


def invitation_accept(*, user: User, invitation: Invitation) -> Membership:
    """Join the invitation's team. Team size and one team per user hold even under concurrent accepts."""
    try:
        with transaction.atomic():
            invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
            # Lock the team so two accepts cannot both see room for one more member.
            team = Team.objects.select_for_update().select_related("challenge").get(pk=invitation.team_id)
            challenge = team.challenge
            _require_usable(invitation, user)
            _require_teams_open(user, challenge)
            current = Membership.objects.filter(user=user, challenge=challenge).select_related("team").first()
            if current is not None:
                if current.team_id == team.pk:
                    raise Conflict("You are already a member of this team.", code="already_member")
                raise Conflict(
                    f"You are already in team {current.team.name}: leave it before joining another.",
                    code="already_in_team",
                )
            _require_room(team, challenge)
            membership = Membership.objects.create(team=team, user=user, challenge=challenge)
            invitation.status = Invitation.Status.ACCEPTED
            invitation.responded_by = user
            invitation.responded_at = timezone.now()
            invitation.save(update_fields=["status", "responded_by", "responded_at"])
            audit_record(actor=user, action="team.member_joined", subject_user=user, team=team, obj=invitation)
            standings_refresh_eligibility(team_ids=[team.pk], reason=f"team #{team.pk}: a member joined")
    except IntegrityError:
        raise Conflict("You are already in a team for this challenge.", code="already_in_team")
    return membership


def invitation_decline(*, user: User, invitation: Invitation) -> Invitation:
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().select_related("team").get(pk=invitation.pk)
        _require_usable(invitation, user)
        if invitation.is_link:
            # A shared link may reach several people: one "no thanks" must not spend it for the others.
            return invitation
        invitation.status = Invitation.Status.DECLINED
        invitation.responded_by = user
        invitation.responded_at = timezone.now()
        invitation.save(update_fields=["status", "responded_by", "responded_at"])
        audit_record(actor=user, action="invitation.declined", subject_user=user, team=invitation.team, obj=invitation)
    return invitation


def _membership_locked(team: Team, user: User) -> Membership:
    membership = Membership.objects.select_for_update().filter(team=team, user=user).first()
    if membership is None:
        raise NotFound("That person is not a member of this team.", code="not_member")
    return membership


def team_leave(*, user: User, team: Team) -> Team | None:
    """Leave the team. The last member leaving dissolves a team that has no submissions. Returns the team or None."""
    with transaction.atomic():
        team = Team.objects.select_for_update().select_related("challenge").get(pk=team.pk)
        _require_teams_open(user, team.challenge)
        membership = _membership_locked(team, user)
        others = team.memberships.exclude(pk=membership.pk).count()
        if team.captain_id == user.pk and others:
            raise ServiceError("Hand the captaincy to another member before you leave.", code="captain_must_transfer")
        if not others:
            if team.submissions.exists():
                raise ServiceError(
                    "You are the last member of a team with submissions: ask the organizers to close it.",
                    code="team_has_submissions",
                )
            audit_record(
                actor=user, action="team.dissolved", subject_user=user, obj=team, data={"team_name": team.name}
            )
            team.delete()
            return None
        membership.delete()
        audit_record(actor=user, action="team.member_left", subject_user=user, team=team, obj=team)
        standings_refresh_eligibility(team_ids=[team.pk], reason=f"team #{team.pk}: a member left")
    return team


def team_member_remove(*, actor: User, team: Team, user: User, reason: str = "") -> Team:
    with transaction.atomic():
        team = Team.objects.select_for_update().select_related("challenge").get(pk=team.pk)
        _require_captain(actor, team)
        _require_teams_open(actor, team.challenge)
        if user.pk == team.captain_id:
            raise ServiceError("The captain cannot be removed: hand over the captaincy first.", code="remove_captain")
        membership = _membership_locked(team, user)
        membership.delete()
        audit_record(actor=actor, action="team.member_removed", subject_user=user, team=team, obj=team, reason=reason)
        standings_refresh_eligibility(team_ids=[team.pk], reason=f"team #{team.pk}: a member was removed")
    return team


def team_captain_transfer(*, actor: User, team: Team, new_captain: User) -> Team:
    with transaction.atomic():
        team = Team.objects.select_for_update().select_related("challenge").get(pk=team.pk)
        _require_captain(actor, team)
        _require_teams_open(actor, team.challenge)
        _membership_locked(team, new_captain)
        if team.captain_id == new_captain.pk:
            raise ServiceError("That member is already the captain.", code="already_captain")
        previous = team.captain_id
        team.captain = new_captain
        team.save(update_fields=["captain"])
        audit_record(
            actor=actor,
            action="team.captain_changed",
            subject_user=new_captain,
            team=team,
            obj=team,
            data={"from_user_id": previous, "to_user_id": new_captain.pk},
        )
    return team
