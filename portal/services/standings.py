"""Portal's one call into the leaderboard."""

from collections.abc import Iterable

from django.db import transaction


def standings_refresh_eligibility(*, team_ids: Iterable[int], reason: str) -> None:
    """These teams' student eligibility may have changed (a review, a member joining or leaving): once this
    transaction commits, the leaderboard recomputes the tracks where they have scored submissions, so the
    student badge and student awards follow."""
    team_ids = sorted({team_id for team_id in team_ids if team_id})
    if not team_ids:
        return

    def recompute() -> None:
        # Imported late: the leaderboard app builds on portal, not the other way round.
        from leaderboard.services import standings_recompute_for_teams

        standings_recompute_for_teams(team_ids, trigger=reason)

    transaction.on_commit(recompute)
