"""Thin Celery tasks of the leaderboard (cpu queue)."""

from celery import shared_task
from django.db import OperationalError

from .services import standings_recompute_for_track


@shared_task(
    name="leaderboard.standings_recompute", autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5
)
def standings_recompute(track_id: int, trigger: str = "") -> int:
    """Win rates are relative: any change in a track recomputes the whole track, in one task."""
    return standings_recompute_for_track(track_id, trigger=trigger).pk


standings_recompute_task = standings_recompute
