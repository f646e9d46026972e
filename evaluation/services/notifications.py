"""Side effects of finished evaluations: the team's e-mail and the track's standings recompute."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from evaluation.models import Submission
from evaluation.services.transitions import on_transition

logger = logging.getLogger(__name__)
S = Submission.Status


def standings_recompute_schedule(*, track_id: int, trigger: str = "") -> None:
    """Ask for the track's standings to be recomputed (one task on the cpu queue).

    Transitions into or out of SCORED are picked up by leaderboard.listeners; call this for the
    other changes of an entry, e.g. a team choosing another final entry.
    """
    from leaderboard.tasks import standings_recompute_task

    standings_recompute_task.delay(track_id, trigger)


@on_transition
def _mail_when_finished(submission_id: int, from_status: str, to_status: str) -> None:
    if to_status in (S.SCORED, S.FAILED) and from_status == S.RUNNING:
        from evaluation.tasks import submission_notify as submission_notify_task

        submission_notify_task.delay(submission_id=submission_id)


def submission_notify(*, submission_id: int) -> int:
    """E-mail the team that its submission was scored or failed. Returns the number of recipients."""
    submission = Submission.objects.select_related("team", "track").get(pk=submission_id)
    recipients = list(submission.team.memberships.exclude(user__email="").values_list("user__email", flat=True))
    if not recipients or submission.status not in (S.SCORED, S.FAILED):
        return 0
    url = settings.SITE_URL.rstrip("/") + reverse("submission_progress", args=[submission.pk])
    if submission.status == S.SCORED:
        subject = f"Submission #{submission.pk} to the {submission.track.name} track is scored"
        body = (
            f"Hello {submission.team.name},\n\nyour submission #{submission.pk} has been evaluated and scored.\n"
            f"See its results: {url}\n"
        )
    else:
        subject = f"Submission #{submission.pk} to the {submission.track.name} track failed"
        body = (
            f"Hello {submission.team.name},\n\nthe evaluation of submission #{submission.pk} failed:\n\n"
            f"{submission.status_reason}\n\n"
            + (
                "This was a problem on our side and does not count toward your daily quota.\n"
                if submission.failure_kind == Submission.FailureKind.INFRA
                else ""
            )
            + f"Details: {url}\n"
        )
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    return len(recipients)
