"""Reads the submission pages need; visibility is decided here."""

from __future__ import annotations

from django.db.models import QuerySet

from evaluation.models import Submission, Upload
from evaluation.services.submissions import Quota, submission_final_entry, submission_quota, team_for_user
from portal.errors import NotFound
from portal.models import Challenge, Team, Track


def submissions_for_team(*, team: Team) -> QuerySet[Submission]:
    return (
        Submission.objects.filter(team=team)
        .select_related("track", "base_model", "created_by")
        .order_by("-created_at", "-id")
    )


def submission_get_visible(*, user, submission_id: int) -> Submission:
    """Team members and staff see a submission; to everyone else it does not exist."""
    qs = Submission.objects.select_related("track__challenge", "team", "base_model", "created_by")
    if not user.is_authenticated:
        raise NotFound("No such submission.")
    if not user.is_staff:
        qs = qs.filter(team__memberships__user=user)
    submission = qs.filter(pk=submission_id).first()
    if submission is None:
        raise NotFound("No such submission.")
    return submission


def submission_open_upload(*, submission: Submission) -> Upload | None:
    return submission.uploads.filter(finished_at__isnull=True).order_by("-created_at").first()


def team_quotas(*, team: Team) -> list[tuple[Track, Quota, Submission | None]]:
    """Per track of the team's challenge: the quota left today and the current final entry."""
    return [
        (track, submission_quota(team=team, track=track), submission_final_entry(team=team, track=track))
        for track in Track.objects.filter(challenge_id=team.challenge_id).select_related("challenge")
    ]


def current_team(*, user) -> tuple[Challenge | None, Team | None]:
    challenge = Challenge.objects.current()
    if challenge is None or not user.is_authenticated:
        return challenge, None
    return challenge, team_for_user(user=user, challenge=challenge)


# The evaluation pipeline (issue 5).
from evaluation.selectors_pipeline import (  # noqa: E402,F401
    evaluation_queue_overview,
    latest_job_for_submission,
    scored_results_for_track,
    submission_progress,
)
