"""The competition core: challenge, tracks and prizes, profiles, teams, invitations, audit trail."""

import hashlib
import secrets
import zoneinfo
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

# "Anywhere on Earth" is UTC-12; the IANA name for that offset is Etc/GMT+12 (sign inverted).
AOE_TIMEZONE = "Etc/GMT+12"


class ChallengeQuerySet(models.QuerySet):
    def current(self) -> "Challenge | None":
        return self.filter(is_active=True).order_by("-starts_at").first()


class Challenge(models.Model):
    class ScoringMode(models.TextChoices):
        WIN_RATE = "win_rate", "Win rate within the track (2023)"
        ABSOLUTE = "absolute", "Absolute metric values"

    name = models.CharField(max_length=200)
    slug = models.SlugField(unique=True)
    tagline = models.CharField(max_length=300, blank=True)
    description = models.TextField(
        blank=True, help_text="Shown on the home page. Plain text; blank lines separate paragraphs."
    )
    rules = models.TextField(
        blank=True, help_text="The rules as participants read them. Plain text; blank lines separate paragraphs."
    )
    timezone = models.CharField(
        max_length=64,
        default=AOE_TIMEZONE,
        help_text="IANA name. Deadlines are judged in this zone. Etc/GMT+12 is Anywhere on Earth.",
    )
    starts_at = models.DateTimeField("challenge start")
    submissions_open_at = models.DateTimeField("submissions open")
    submission_deadline = models.DateTimeField("submission deadline")
    winners_notified_at = models.DateTimeField("winners notified")
    presentation_at = models.DateTimeField("top-team presentation")
    max_team_size = models.PositiveSmallIntegerField(default=5)
    daily_submission_quota = models.PositiveSmallIntegerField(
        default=3, help_text="Submissions per team, per track, per day (in the challenge's timezone)."
    )
    scoring_mode = models.CharField(max_length=16, choices=ScoringMode.choices, default=ScoringMode.WIN_RATE)
    open_weight = models.FloatField(default=1 / 3, help_text="Weight of the open suite in the final score.")
    hidden_weight = models.FloatField(default=2 / 3, help_text="Weight of the hidden suite in the final score.")
    hidden_revealed_at = models.DateTimeField(
        null=True, blank=True, help_text="When hidden-suite results became public."
    )
    is_active = models.BooleanField(default=True)

    objects = ChallengeQuerySet.as_manager()

    class Meta:
        ordering = ["-starts_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def timezone_label(self) -> str:
        return "Anywhere on Earth (UTC−12)" if self.timezone == AOE_TIMEZONE else self.timezone

    def important_dates(self) -> list[tuple[str, datetime]]:
        return [
            ("Challenge start", self.starts_at),
            ("Submissions open", self.submissions_open_at),
            ("Submission deadline", self.submission_deadline),
            ("Winners notified", self.winners_notified_at),
            ("Top-team presentation", self.presentation_at),
        ]

    def next_date(self, now: datetime | None = None) -> tuple[str, datetime] | None:
        now = now or timezone.now()
        return next(((label, when) for label, when in self.important_dates() if when > now), None)

    def accepts_submissions(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.submissions_open_at <= now < self.submission_deadline

    def is_past_deadline(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) >= self.submission_deadline

    @property
    def hidden_revealed(self) -> bool:
        return self.hidden_revealed_at is not None


# Each track's GPU workers consume the queue named by this prefix and the track's slug.
GPU_QUEUE_PREFIX = "gpu-"


class Track(models.Model):
    challenge = models.ForeignKey(Challenge, on_delete=models.CASCADE, related_name="tracks")
    slug = models.SlugField(help_text="Short id used in URLs, queues and the CLI, e.g. 4090 or a100.")
    name = models.CharField(max_length=100)
    gpu_model = models.CharField(max_length=100)
    gpu_memory_gb = models.PositiveSmallIntegerField(help_text="Memory budget enforced on evaluation workers.")
    gpu_price_usd = models.PositiveIntegerField(default=0)
    finetune_hours_limit = models.FloatField(default=24.0)
    max_upload_bytes = models.BigIntegerField(
        default=64 * 1024**3, help_text="Largest archive a team may upload to this track."
    )
    order = models.PositiveSmallIntegerField(default=0)
    finalized_at = models.DateTimeField(null=True, blank=True)
    finalized_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["challenge", "order", "id"]
        constraints = [models.UniqueConstraint(fields=["challenge", "slug"], name="track_unique_slug")]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        return f"{GPU_QUEUE_PREFIX}{self.slug}"

    @property
    def is_finalized(self) -> bool:
        return self.finalized_at is not None


class Prize(models.Model):
    class Kind(models.TextChoices):
        PLACE = "place", "Place"
        STUDENT = "student", "Student award"

    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="prizes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    place = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1, 2, 3 … for places.")
    amount_usd = models.PositiveIntegerField()
    count = models.PositiveSmallIntegerField(default=1, help_text="How many awards of this kind (student awards).")

    class Meta:
        ordering = ["track", "kind", "place"]

    def __str__(self) -> str:
        if self.kind == self.Kind.PLACE:
            return f"{self.track} place {self.place}: ${self.amount_usd:,}"
        return f"{self.track} student award ×{self.count}: ${self.amount_usd:,}"


class Profile(models.Model):
    class StudentStatus(models.TextChoices):
        NOT_STUDENT = "not_student", "Not a student"
        PENDING = "pending", "Evidence awaiting review"
        VERIFIED = "verified", "Verified student"
        REJECTED = "rejected", "Evidence rejected"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    display_name = models.CharField(max_length=100, blank=True)
    affiliation = models.CharField(max_length=200, blank=True)
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166-1 alpha-2 code.")
    student_status = models.CharField(
        max_length=16, choices=StudentStatus.choices, default=StudentStatus.NOT_STUDENT, db_index=True
    )
    student_evidence = models.FileField(upload_to="private/student-evidence/", blank=True)
    student_evidence_uploaded_at = models.DateTimeField(null=True, blank=True)
    student_reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    student_reviewed_at = models.DateTimeField(null=True, blank=True)
    student_rejection_reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return self.display_name or self.user.email or self.user.get_username()

    @property
    def is_verified_student(self) -> bool:
        return self.student_status == self.StudentStatus.VERIFIED


class TeamQuerySet(models.QuerySet):
    def with_eligibility(self) -> "TeamQuerySet":
        """Annotate member_count, verified_count and student_eligible in one query for many teams.

        The rule itself is portal.selectors.team_student_eligibility; this is its set-wise twin and a
        test keeps the two in agreement.
        """
        verified = Profile.StudentStatus.VERIFIED
        return self.annotate(
            member_count=models.Count("memberships", distinct=True),
            verified_count=models.Count(
                "memberships",
                filter=models.Q(memberships__user__profile__student_status=verified),
                distinct=True,
            ),
        ).annotate(
            student_eligible=models.Case(
                models.When(member_count__gt=0, verified_count=models.F("member_count"), then=models.Value(True)),
                default=models.Value(False),
                output_field=models.BooleanField(),
            )
        )


class Team(models.Model):
    challenge = models.ForeignKey(Challenge, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=90)
    captain = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="captained_teams")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), "challenge", name="team_unique_name_ci"),
            models.UniqueConstraint(fields=["challenge", "slug"], name="team_unique_slug"),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    # Denormalised so the database itself enforces one team per user per challenge.
    challenge = models.ForeignKey(Challenge, on_delete=models.CASCADE, related_name="+")
    joined_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["joined_at"]
        constraints = [models.UniqueConstraint(fields=["user", "challenge"], name="membership_one_team_per_challenge")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Invitation(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True, help_text="Blank for a shareable link.")
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    responded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    responded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Invitation to {self.team} ({self.email or 'link'})"

    @staticmethod
    def new_token() -> tuple[str, str]:
        """A fresh token and its hash; only the hash is stored."""
        token = secrets.token_urlsafe(32)
        return token, _hash_token(token)

    @staticmethod
    def hash_token(token: str) -> str:
        return _hash_token(token)

    @property
    def is_link(self) -> bool:
        return not self.email

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) >= self.expires_at


class AuditEvent(models.Model):
    """Who did what to whom, when and why. Written by services, never edited."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64, db_index=True)
    subject_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.object_repr}"


# Personal API tokens live beside the API plumbing; imported here so they belong to this app.
from portal.api.models import ApiToken  # noqa: E402,F401
