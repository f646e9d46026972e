"""A submission's life: the base-model allow-list, submissions and their status history."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.models import Team, Track


class BaseModel(models.Model):
    """A base model on the organizers' allow-list."""

    name = models.CharField(max_length=100, unique=True, help_text="What teams type, e.g. mistral-7b.")
    display_name = models.CharField(max_length=200, blank=True)
    architecture = models.CharField(max_length=100, help_text="config.json architectures[0], e.g. LlamaForCausalLM.")
    parameter_count = models.BigIntegerField(help_text="Number of parameters of the base model.")
    licence = models.CharField(max_length=100)
    weights_path = models.CharField(
        max_length=500, blank=True, help_text="Folder where workers find the base weights (for adapters)."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "allowed base model"

    def __str__(self) -> str:
        return self.display_name or self.name


class Submission(models.Model):
    class Status(models.TextChoices):
        UPLOADING = "uploading", "Uploading"
        VALIDATING = "validating", "Validating"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SCORED = "scored", "Scored"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        DISQUALIFIED = "disqualified", "Disqualified"

    class Kind(models.TextChoices):
        FULL = "full", "Full weights"
        ADAPTER = "adapter", "LoRA adapter"

    class FailureKind(models.TextChoices):
        NONE = "", "—"
        USER = "user", "Participant error"
        INFRA = "infra", "Infrastructure error"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="submissions")
    track = models.ForeignKey(Track, on_delete=models.PROTECT, related_name="submissions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Declared metadata.
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FULL)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="submissions")
    datasets = models.TextField(help_text="Datasets used for fine-tuning, with their licences, one per line.")
    finetune_gpu_hours = models.FloatField(help_text="GPU-hours of fine-tuning on the track's GPU.")
    recipe_url = models.URLField(max_length=500, help_text="Repository and commit of the training recipe.")
    notes = models.TextField(blank=True)
    # Status: assigned only by evaluation.services.submission_transition.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADING, db_index=True)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    failure_kind = models.CharField(max_length=8, choices=FailureKind.choices, default="", blank=True)
    # The upload.
    size_bytes = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    archive_name = models.CharField(max_length=300, blank=True)
    archive_path = models.CharField(max_length=500, blank=True, help_text="Storage name of the uploaded archive.")
    model_dir = models.CharField(max_length=500, blank=True, help_text="Validated, extracted model folder.")
    # Facts read from the weights during validation.
    parameter_count = models.BigIntegerField(null=True, blank=True)
    estimated_memory_gb = models.FloatField(null=True, blank=True)
    # Organizer-controlled.
    priority = models.SmallIntegerField(default=0, help_text="Higher runs earlier within its queue.")
    is_final = models.BooleanField(default=False, help_text="The team's chosen entry for this track.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["track", "status"]), models.Index(fields=["team", "track", "created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "track"], condition=models.Q(is_final=True), name="submission_one_final_per_track"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.team} ({self.track.slug})"

    @property
    def counts_toward_quota(self) -> bool:
        """Mirrors `evaluation.services.submissions.quota_counted_q`.

        An upload in progress holds its slot (or parallel creations could overshoot the quota);
        an infrastructure failure and an upload cancelled or expired before it finished free it.
        """
        if self.failure_kind == self.FailureKind.INFRA:
            return False
        return not (self.status == self.Status.CANCELLED and not self.sha256)


class SubmissionEvent(models.Model):
    """One row per status change: the history a team reads."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=Submission.Status.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=Submission.Status.choices)
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.submission_id}: {self.from_status or '∅'} → {self.to_status}"


class EvaluationJob(models.Model):
    """One evaluation round of a submission: created when it is queued, reused when an
    infrastructure retry or a lost worker brings it back, replaced by a new one on a rerun.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for a GPU"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="jobs")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Claims of this job by a worker (first run, infrastructure retries, redeliveries).
    attempts = models.PositiveSmallIntegerField(default=0)
    worker_lost_count = models.PositiveSmallIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="Backoff: not claimed before this time.")
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    worker_hostname = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # {"suite_role", "runs_done", "runs_total", "current_run", "instances_done", "instances_total",
    #  "elapsed_s", "eta_s"}; current_run is never shown to participants for the hidden suite.
    progress = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    engine_version = models.CharField(max_length=50, blank=True)
    helm_version = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} of submission #{self.submission_id} ({self.state})"

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class SuiteResult(models.Model):
    """The stored result document of one suite of a job, written as soon as that suite finishes."""

    class Role(models.TextChoices):
        OPEN = "open", "Open suite"
        HIDDEN = "hidden", "Hidden suite"

    job = models.ForeignKey(EvaluationJob, on_delete=models.CASCADE, related_name="suite_results")
    role = models.CharField(max_length=8, choices=Role.choices)
    suite = models.CharField(max_length=100)
    # [{"name", "scenario", "status", "error"}] for every run of the suite.
    runs = models.JSONField(default=list, blank=True)
    efficiency = models.JSONField(default=dict, blank=True)
    hardware = models.JSONField(default=dict, blank=True)
    engine_version = models.CharField(max_length=50, blank=True)
    helm_version = models.CharField(max_length=50, blank=True)
    schema_version = models.CharField(max_length=20, blank=True)
    raw_output_path = models.CharField(
        max_length=500, blank=True, help_text="Storage name of the archived HELM output."
    )
    document = models.JSONField(default=dict, blank=True, help_text="The result document minus its records.")
    finished_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "role"]
        constraints = [models.UniqueConstraint(fields=["job", "role"], name="suiteresult_one_per_role")]

    def __str__(self) -> str:
        return f"{self.suite} ({self.role}) of job {self.job_id}"


class MetricRecord(models.Model):
    """One number from HELM's stats.json, upserted by its natural key so a repeated job never duplicates."""

    suite_result = models.ForeignKey(SuiteResult, on_delete=models.CASCADE, related_name="records")
    run = models.CharField(max_length=300)
    scenario = models.CharField(max_length=100, blank=True)
    metric = models.CharField(max_length=100)
    split = models.CharField(max_length=20, blank=True)
    sub_split = models.CharField(max_length=100, blank=True)
    perturbation = models.CharField(max_length=100, blank=True)
    computed_on = models.CharField(max_length=20, blank=True)
    value = models.FloatField(null=True)
    count = models.IntegerField(default=0)

    class Meta:
        ordering = ["suite_result", "run", "metric"]
        constraints = [
            models.UniqueConstraint(
                fields=["suite_result", "run", "metric", "split", "sub_split", "perturbation", "computed_on"],
                name="metricrecord_natural_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.run} {self.metric}={self.value}"


class WorkerHeartbeat(models.Model):
    """What each evaluation worker last said about itself, for the organizers' queue page."""

    hostname = models.CharField(max_length=200, unique=True)
    queues = models.CharField(max_length=300, blank=True)
    gpu = models.CharField(max_length=200, blank=True)
    current_job = models.ForeignKey(EvaluationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class UploadQuerySet(models.QuerySet):
    def unfinished(self):
        return self.filter(finished_at__isnull=True)

    def expired(self, now=None):
        return self.unfinished().filter(expires_at__lte=now or timezone.now())


class Upload(models.Model):
    """One tus upload: where its bytes are, how many arrived, and the SHA-256 state so far.

    The hash state is the serialized internal state of a `rehashes.PySha256`, so any web process
    can continue the digest where the previous request stopped without re-reading the bytes.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="uploads")
    length = models.BigIntegerField(help_text="Upload-Length: the total size in bytes.")
    offset = models.BigIntegerField(default=0, help_text="Bytes received and stored so far.")
    filename = models.CharField(max_length=300, blank=True)
    storage_name = models.CharField(max_length=500, help_text="Name of the bytes in the default storage.")
    storage_state = models.JSONField(default=dict, blank=True, help_text="Backend bookkeeping (S3 multipart ids).")
    metadata = models.JSONField(default=dict, blank=True, help_text="Decoded Upload-Metadata.")
    sha256_state = models.BinaryField(null=True, blank=True, editable=False)
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A lease instead of a long transaction: one PATCH at a time writes to an upload.
    locked_until = models.DateTimeField(null=True, blank=True)

    objects = UploadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"upload {self.pk} of submission #{self.submission_id} ({self.offset}/{self.length})"

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def progress(self) -> float:
        return self.offset / self.length if self.length else 1.0
