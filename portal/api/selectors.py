"""Reads the API plumbing needs."""

from django.db.models import QuerySet

from portal.api.models import ApiToken
from portal.models import Challenge, Track


def api_token_list(*, user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("revoked_at", "-created_at", "-id")


def challenge_current_with_tracks() -> Challenge | None:
    """The active challenge, its tracks and their prize tables, in three queries."""
    challenge = Challenge.objects.current()
    if challenge is None:
        return None
    tracks = list(challenge.tracks.prefetch_related("prizes").order_by("order", "id"))
    challenge.track_list = tracks
    return challenge


def track_by_slug(slug: str) -> Track | None:
    challenge = Challenge.objects.current()
    if challenge is None:
        return None
    return challenge.tracks.prefetch_related("prizes").filter(slug=slug).first()
