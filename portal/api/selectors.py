"""Reads the API plumbing needs."""

from django.db.models import QuerySet

from portal import selectors
from portal.api.models import ApiToken
from portal.models import Challenge, Profile, Track


def api_token_list(*, user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("revoked_at", "-created_at", "-id")


def challenge_current_with_tracks() -> Challenge | None:
    """The active challenge, its tracks and their prize tables, in three queries."""
    challenge = selectors.challenge_current()
    if challenge is None:
        return None
    challenge.track_list = list(selectors.challenge_tracks(challenge))
    return challenge


def track_by_slug(slug: str) -> Track | None:
    challenge = selectors.challenge_current()
    if challenge is None:
        return None
    return selectors.challenge_tracks(challenge).filter(slug=slug).first()


def profiles_for_review(*, student_status: str | None = None) -> QuerySet[Profile]:
    """Organizers' review list: evidence first-come, first-served."""
    queryset = Profile.objects.select_related("user").exclude(student_evidence="")
    if student_status:
        queryset = queryset.filter(student_status=student_status)
    return queryset.order_by("student_evidence_uploaded_at", "pk")
