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
from django.db import transaction
from django.http import HttpRequest

from portal.models import Track

from .selectors import Viewer

CACHE_SECONDS = 300
# How long a web process may keep using a track's state (its challenge, and which snapshot is
# current) without asking the database. Writers delete it on commit, which is immediate with a
# shared cache (Redis) and bounded by this with per-process memory caches.
STATE_SECONDS = 5


def _state_key(slug: str) -> str:
    return f"leaderboard:track-state:{slug}"


def track_state(slug: str, load):
    """The track (with challenge and current_snapshot_id) from the cache, or `load()` it."""
    key = _state_key(slug)
    track = cache.get(key)
    if track is None:
        track = load()
        cache.set(key, track, STATE_SECONDS)
    return track


def forget_track_state(*slugs: str) -> None:
    """Now (so this process sees its own write) and again after commit (so that a request that read
    the old state in between does not keep it)."""
    keys = [_state_key(s) for s in slugs]
    cache.delete_many(keys)
    transaction.on_commit(lambda: cache.delete_many(keys))


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
