from django.contrib import admin

from evaluation.admin_pipeline import SUBMISSION_ORGANIZER_ACTIONS
from evaluation.models import BaseModel, Submission, SubmissionEvent, Upload


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    """The allow-list of base models teams may fine-tune."""

    list_display = ("name", "display_name", "architecture", "parameter_count", "licence", "weights_path", "is_active")
    list_filter = ("is_active", "architecture")
    list_editable = ("is_active",)
    search_fields = ("name", "display_name", "architecture")


class SubmissionEventInline(admin.TabularInline):
    model = SubmissionEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "from_status", "to_status", "reason", "actor")

    def has_add_permission(self, request, obj=None):
        return False


class UploadInline(admin.TabularInline):
    model = Upload
    extra = 0
    can_delete = False
    fields = ("id", "filename", "offset", "length", "sha256", "created_at", "expires_at", "finished_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "team",
        "track",
        "status",
        "failure_kind",
        "kind",
        "base_model",
        "size_bytes",
        "created_at",
        "is_final",
    )
    list_filter = ("track", "status", "failure_kind", "kind")
    search_fields = ("team__name", "sha256")
    # Rerun, cancel, requeue, priority, disqualify: each through a service that writes the audit trail.
    actions = SUBMISSION_ORGANIZER_ACTIONS
    # Status changes go through submission_transition (the pipeline's admin actions), never this form.
    readonly_fields = (
        "status", "status_reason", "status_changed_at", "failure_kind", "size_bytes", "sha256", "archive_name",
        "archive_path", "model_dir", "parameter_count", "estimated_memory_gb", "created_at", "created_by", "priority",
    )  # fmt: skip
    inlines = [UploadInline, SubmissionEventInline]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ("id", "submission", "owner", "offset", "length", "created_at", "expires_at", "finished_at")
    list_filter = ("finished_at",)
    readonly_fields = [f.name for f in Upload._meta.fields]

    def has_add_permission(self, request):
        return False
