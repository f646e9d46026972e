"""Stored standings (one snapshot per recomputation, the old ones kept as history) and reproductions."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from evaluation.models import Submission
from portal.models import Team, Track

SUITES = ("open", "hidden")
ASPECT_NAMES = ("accuracy", "robustness", "fairness", "bias", "efficiency")


class TrackScoringSettings(models.Model):
    """Per-track inputs of the absolute scoring mode (win-rate mode needs none)."""

    track = models.OneToOneField(Track, on_delete=models.CASCADE, related_name="scoring_settings")
    efficiency_references = models.JSONField(
        default=dict,
        blank=True,
        help_text='Reference value per efficiency figure, e.g. {"gpu_seconds": 3600, "output_tokens_per_second": 30}.',
    )

    class Meta:
        verbose_name_plural = "track scoring settings"

    def __str__(self) -> str:
        return f"Scoring settings of {self.track}"


class StandingsSnapshotQuerySet(models.QuerySet):
    def current(self) -> "StandingsSnapshotQuerySet":
        return self.filter(is_current=True)


class StandingsSnapshot(models.Model):
    """The standings of one track as computed at one moment. Exactly one per track is current."""

    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="standings_snapshots")
    computed_at = models.DateTimeField(default=timezone.now, db_index=True)
    is_current = models.BooleanField(default=True)
    is_frozen = models.BooleanField(default=False, help_text="Finalized: never recomputed again.")
    frozen_at = models.DateTimeField(null=True, blank=True)
    trigger = models.CharField(max_length=200, blank=True, help_text="What caused this recomputation.")
    scoring_mode = models.CharField(max_length=16)
    suite_weights = models.JSONField(default=dict)
    entry_count = models.PositiveIntegerField(default=0, help_text="Ranked team entries.")
    awards = models.JSONField(default=dict, blank=True, help_text="leaderboard.ranking.awards() at that moment.")

    objects = StandingsSnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["-computed_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["track"], condition=models.Q(is_current=True), name="standings_one_current_per_track"
            )
        ]

    def __str__(self) -> str:
        return f"{self.track} standings at {self.computed_at:%Y-%m-%d %H:%M}"


class Standing(models.Model):
    """One scored submission in one snapshot. Compute columns are copied here so pages read one table."""

    snapshot = models.ForeignKey(StandingsSnapshot, on_delete=models.CASCADE, related_name="standings")
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="standings")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    is_team_entry = models.BooleanField(default=False)
    rank = models.PositiveIntegerField(null=True, blank=True, help_text="Team entries only.")
    rank_if_entry = models.PositiveIntegerField(null=True, blank=True)
    # The public rank while hidden results are not revealed: ranking by the final score would leak them.
    open_rank = models.PositiveIntegerField(null=True, blank=True, help_text="Rank by open-suite score alone.")
    final_score = models.FloatField(null=True, blank=True)
    open_score = models.FloatField(null=True, blank=True)
    hidden_score = models.FloatField(null=True, blank=True)
    open_accuracy = models.FloatField(null=True, blank=True)
    open_robustness = models.FloatField(null=True, blank=True)
    open_fairness = models.FloatField(null=True, blank=True)
    open_bias = models.FloatField(null=True, blank=True)
    open_efficiency = models.FloatField(null=True, blank=True)
    hidden_accuracy = models.FloatField(null=True, blank=True)
    hidden_robustness = models.FloatField(null=True, blank=True)
    hidden_fairness = models.FloatField(null=True, blank=True)
    hidden_bias = models.FloatField(null=True, blank=True)
    hidden_efficiency = models.FloatField(null=True, blank=True)
    opponents = models.PositiveIntegerField(default=0)
    # {"open": {"weight": …, "scenarios": {name: {"scores": {aspect: x}, "values": {aspect: x}}}}, "hidden": …}
    breakdown = models.JSONField(default=dict, blank=True)
    # Copied for fast reads and sorting.
    student_eligible = models.BooleanField(default=False)
    base_model_name = models.CharField(max_length=200, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finetune_gpu_hours = models.FloatField(null=True, blank=True)
    eval_gpu_seconds = models.FloatField(null=True, blank=True)
    peak_gpu_memory_bytes = models.BigIntegerField(null=True, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    output_tokens_per_second = models.FloatField(null=True, blank=True)
    reproduction = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["snapshot", "rank", "-final_score", "id"]
        indexes = [
            models.Index(fields=["snapshot", "rank"]),
            models.Index(fields=["snapshot", "open_rank"]),
            models.Index(fields=["snapshot", "-final_score"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "submission"], name="standing_unique_submission"),
        ]

    def __str__(self) -> str:
        return f"#{self.rank or '–'} {self.team_id} ({self.submission_id})"

    def aspect(self, suite: str, aspect: str) -> float | None:
        return getattr(self, f"{suite}_{aspect}")


class Reproduction(models.Model):
    """The organizers' re-run of a top entry's fine-tune. One row per submission, updated in place
    (each change is in the audit trail)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VERIFIED = "verified", "Verified"
        FAILED = "failed", "Failed"

    submission = models.OneToOneField(Submission, on_delete=models.CASCADE, related_name="reproduction")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="reproductions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    notes = models.TextField(blank=True)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-recorded_at"]

    def __str__(self) -> str:
        return f"Reproduction of #{self.submission_id}: {self.status}"
