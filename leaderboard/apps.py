from django.apps import AppConfig


class LeaderboardConfig(AppConfig):
    name = "leaderboard"
    verbose_name = "Leaderboard"

    def ready(self) -> None:
        from evaluation.services.transitions import on_transition

        from .listeners import recompute_on_scored_change

        if recompute_on_scored_change not in _registered:
            on_transition(recompute_on_scored_change)
            _registered.append(recompute_on_scored_change)


_registered: list = []
