from django.contrib import admin

from evaluation.admin_pipeline import SUBMISSION_ORGANIZER_ACTIONS
from evaluation.models import Submission


# The lead merges this with the uploads' SubmissionAdmin: keep `actions` and the read-only status.
@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = ["id", "team", "track", "status", "priority", "failure_kind", "created_at"]
    list_filter = ["status", "track", "failure_kind"]
    search_fields = ["id", "team__name"]
    readonly_fields = ["status", "status_reason", "status_changed_at", "failure_kind", "priority"]
    actions = SUBMISSION_ORGANIZER_ACTIONS
