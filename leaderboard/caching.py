"""Cache of rendered public answers, keyed by the immutable snapshot they were read from.

A snapshot never changes once written (a recomputation writes a new one, finalizing freezes it),
so an answer rendered from snapshot N stays correct for as long as N is current. The key also holds
everything else the answer depends on: the request's query string, whether the hidden suite is
public, whether the track is finalized, the viewer's teams. Team names and the like can be at most
CACHE_SECONDS stale. Organizers are never served from the cache.
"""

import hashlib

from django.contrib.messages import get_messages
from django.core.cache import cache
from django.http import HttpRequest

from portal.models import Track

from .selectors import Viewer

CACHE_SECONDS = 300


def answer_key(kind: str, request: HttpRequest, track: Track, viewer: Viewer) -> str | None:
    """None when this answer must not come from (or go to) the cache."""
    if viewer.organizer or request.user.is_staff:
        return None
    if kind == "page" and (request.user.is_authenticated or len(get_messages(request))):
        return None  # the page shell shows the user's name, their messages and CSRF tokens
    state = (
        track.pk,
        getattr(track, "current_snapshot_id", None),
        track.challenge.hidden_revealed_at,
        track.finalized_at,
        sorted(viewer.team_ids),
        sorted(request.GET.lists()),
        request.headers.get("HX-Request", ""),
    )
    return f"leaderboard:{kind}:" + hashlib.sha256(repr(state).encode()).hexdigest()


def get(key: str | None):
    return cache.get(key) if key else None


def put(key: str | None, value) -> None:
    if key:
        cache.set(key, value, CACHE_SECONDS)
