"""Creating submissions (dates and the daily quota) and choosing a team's final entry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from evaluation.models import BaseModel, Submission, SubmissionEvent
from portal.errors import NotFound, PermissionDenied, ServiceError
from portal.models import Challenge, Membership, Team, Track
from portal.services.audit import audit_record

S = Submission.Status


class SubmissionsClosed(PermissionDenied):
    code = "submissions_closed"


class QuotaExceeded(ServiceError):
    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, resets_at: datetime):
        super().__init__(message)
        self.resets_at = resets_at


@dataclass(frozen=True)
class Quota:
    limit: int
    used: int
    resets_at: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def format_in_challenge_tz(when: datetime, challenge: Challenge) -> str:
    return f"{timezone.localtime(when, challenge.tz):%Y-%m-%d %H:%M} ({challenge.timezone_label})"


def quota_counted_q() -> Q:
    """Submissions that use a slot: all but infrastructure failures and uploads abandoned before they finished."""
    return ~Q(failure_kind=Submission.FailureKind.INFRA) & ~Q(status=S.CANCELLED, sha256="")


def quota_day(challenge: Challenge, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The current day in the challenge's timezone, as an aware [start, end) interval."""
    local = timezone.localtime(now or timezone.now(), challenge.tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # Add a day on the calendar, then re-localise, so DST changes keep midnight at midnight.
    end = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=challenge.tz)
    return start, end


def submission_quota(*, team: Team, track: Track, now: datetime | None = None) -> Quota:
    challenge = track.challenge
    start, end = quota_day(challenge, now)
    used = (
        Submission.objects.filter(team=team, track=track, created_at__gte=start, created_at__lt=end)
        .filter(quota_counted_q())
        .count()
    )
    return Quota(limit=challenge.daily_submission_quota, used=used, resets_at=end)


def check_submission_window(challenge: Challenge, now: datetime | None = None) -> None:
    now = now or timezone.now()
    if now < challenge.submissions_open_at:
        raise SubmissionsClosed(
            f"Submissions open at {format_in_challenge_tz(challenge.submissions_open_at, challenge)}."
        )
    if now >= challenge.submission_deadline:
        raise SubmissionsClosed(
            f"The submission deadline was {format_in_challenge_tz(challenge.submission_deadline, challenge)}; "
            "no new submissions are accepted."
        )


def team_for_user(*, user, challenge: Challenge) -> Team | None:
    membership = Membership.objects.filter(user=user, challenge=challenge).select_related("team").first()
    return membership.team if membership else None


@transaction.atomic
def submission_create(
    *,
    user,
    track: Track,
    base_model: BaseModel,
    datasets: str,
    finetune_gpu_hours: float,
    recipe_url: str,
    notes: str = "",
    now: datetime | None = None,
) -> Submission:
    """Create a submission awaiting its upload, if the dates and the team's daily quota allow it."""
    challenge = track.challenge
    team = team_for_user(user=user, challenge=challenge)
    if team is None:
        raise PermissionDenied("Join or create a team before submitting.")
    if track.is_finalized:
        raise SubmissionsClosed(f"The {track.name} track is finalized.")
    check_submission_window(challenge, now)
    if not base_model.is_active:
        raise ServiceError(f"{base_model} is not on the allow-list.", field="base_model")
    if not 0 <= finetune_gpu_hours <= track.finetune_hours_limit:
        raise ServiceError(
            f"Fine-tuning may take at most {track.finetune_hours_limit:g} GPU-hours on the {track.name} track.",
            field="finetune_gpu_hours",
        )
    if not datasets.strip():
        raise ServiceError("List the datasets you fine-tuned on, with their licences.", field="datasets")
    # The lock serialises every creation of this team, so the count below cannot be raced past.
    Team.objects.select_for_update().get(pk=team.pk)
    quota = submission_quota(team=team, track=track, now=now)
    if quota.remaining <= 0:
        raise QuotaExceeded(
            f"Your team has used its {quota.limit} submissions for today on the {track.name} track; "
            f"the count resets at {format_in_challenge_tz(quota.resets_at, challenge)}.",
            resets_at=quota.resets_at,
        )
    submission = Submission.objects.create(
        team=team,
        track=track,
        created_by=user,
        base_model=base_model,
        datasets=datasets.strip(),
        finetune_gpu_hours=finetune_gpu_hours,
        recipe_url=recipe_url,
        notes=notes.strip(),
    )
    SubmissionEvent.objects.create(
        submission=submission, from_status="", to_status=S.UPLOADING, reason="Submission created.", actor=user
    )
    audit_record(actor=user, action="submission.create", team=team, obj=submission)
    return submission


FINAL_STATUSES = {S.QUEUED, S.RUNNING, S.SCORED}


@transaction.atomic
def submission_set_final(*, user, team: Team, track: Track, submission_id: int | None) -> Submission | None:
    """Mark the team's entry for a track; None goes back to the default (its most recent scored one)."""
    Team.objects.select_for_update().get(pk=team.pk)
    if not (user.is_staff or Membership.objects.filter(team=team, user=user).exists()):
        raise NotFound("No such team.")
    chosen = None
    if submission_id is not None:
        chosen = Submission.objects.filter(pk=submission_id, team=team, track=track).first()
        if chosen is None:
            raise NotFound("No such submission of your team on this track.")
        if chosen.status not in FINAL_STATUSES:
            raise ServiceError(
                f"Submission #{chosen.pk} is {chosen.get_status_display().lower()}; choose a scored one."
            )
    Submission.objects.filter(team=team, track=track, is_final=True).exclude(pk=submission_id).update(is_final=False)
    if chosen is not None and not chosen.is_final:
        chosen.is_final = True
        chosen.save(update_fields=["is_final"])
    audit_record(
        actor=user,
        action="submission.set_final",
        team=team,
        obj=chosen,
        data={"track": track.slug, "submission_id": submission_id},
    )
    # The team's entry changed: its track's standings must follow (after commit).
    from evaluation.services.notifications import standings_recompute_schedule

    transaction.on_commit(lambda: standings_recompute_schedule(track_id=track.pk, trigger="final entry changed"))
    return chosen or submission_final_entry(team=team, track=track)


def submission_final_entry(*, team: Team, track: Track) -> Submission | None:
    """The entry that represents the team on the track: its explicit choice, else its most recent scored one."""
    chosen = Submission.objects.filter(team=team, track=track, is_final=True).exclude(status=S.DISQUALIFIED).first()
    if chosen is not None:
        return chosen
    return Submission.objects.filter(team=team, track=track, status=S.SCORED).order_by("-created_at", "-id").first()
