from django.contrib import admin

from .models import Reproduction, Standing, StandingsSnapshot, TrackScoringSettings


@admin.register(TrackScoringSettings)
class TrackScoringSettingsAdmin(admin.ModelAdmin):
    list_display = ["track", "efficiency_references"]


@admin.register(StandingsSnapshot)
class StandingsSnapshotAdmin(admin.ModelAdmin):
    """History is read-only: snapshots are written by leaderboard.services only."""

    list_display = ["track", "computed_at", "is_current", "is_frozen", "entry_count", "trigger"]
    list_filter = ["track", "is_current", "is_frozen"]
    readonly_fields = [f.name for f in StandingsSnapshot._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Standing)
class StandingAdmin(admin.ModelAdmin):
    list_display = [
        "snapshot",
        "rank",
        "team",
        "submission",
        "is_team_entry",
        "final_score",
        "open_score",
        "hidden_score",
    ]
    list_filter = ["snapshot__track", "snapshot__is_current", "is_team_entry"]
    list_select_related = ["snapshot__track", "team", "submission"]
    raw_id_fields = ["snapshot", "submission", "team"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Reproduction)
class ReproductionAdmin(admin.ModelAdmin):
    """Read here; record outcomes through leaderboard.services.reproduction_record (audited)."""

    list_display = ["submission", "team", "status", "recorded_by", "recorded_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in Reproduction._meta.fields]

    def has_add_permission(self, request):
        return False
