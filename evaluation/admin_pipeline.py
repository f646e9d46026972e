"""Organizer actions on submissions, and the admin of evaluation jobs and their results.

`SUBMISSION_ORGANIZER_ACTIONS` plugs into whichever SubmissionAdmin the project has.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from evaluation.models import EvaluationJob, MetricRecord, SuiteResult, WorkerHeartbeat
from evaluation.services import (
    submission_cancel,
    submission_disqualify,
    submission_requeue,
    submission_rerun,
    submission_set_priority,
)
from portal.errors import ServiceError


def _each(modeladmin, request, queryset, verb: str, call) -> None:
    done, errors = 0, []
    for submission in queryset:
        try:
            call(submission)
            done += 1
        except ServiceError as exc:
            errors.append(exc.message)
    if done:
        modeladmin.message_user(request, f"{verb}: {done} submission(s).", messages.SUCCESS)
    for error in errors:
        modeladmin.message_user(request, error, messages.ERROR)


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class DisqualifyForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), help_text="The team reads this reason on its page."
    )


class PriorityForm(forms.Form):
    priority = forms.IntegerField(help_text="Higher runs earlier within its track's queue; 0 is normal.")
    reason = forms.CharField(required=False)


def _with_form(modeladmin, request, queryset, *, form_class, title: str, action: str, apply):
    """An admin action that asks for input on an intermediate page before it runs."""
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            apply(form.cleaned_data)
            return None
    else:
        form = form_class()
    return TemplateResponse(
        request,
        "evaluation/admin_action_form.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "form": form,
            "queryset": queryset,
            "action": action,
            "opts": modeladmin.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        },
    )


@admin.action(description="Rerun the evaluation (from scratch)")
def rerun_evaluation(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, "Rerun", lambda s: submission_rerun(submission_id=s.pk, actor=request.user))


@admin.action(description="Cancel the evaluation (revokes a running task)")
def cancel_evaluation(modeladmin, request, queryset):
    _each(
        modeladmin,
        request,
        queryset,
        "Cancelled",
        lambda s: submission_cancel(submission_id=s.pk, actor=request.user, reason="Cancelled by the organizers."),
    )


@admin.action(description="Requeue (put a running or stuck job back in its queue)")
def requeue_evaluation(modeladmin, request, queryset):
    _each(
        modeladmin, request, queryset, "Requeued", lambda s: submission_requeue(submission_id=s.pk, actor=request.user)
    )


@admin.action(description="Change priority…")
def change_priority(modeladmin, request, queryset):
    def apply(data):
        _each(
            modeladmin,
            request,
            queryset,
            f"Priority set to {data['priority']}",
            lambda s: submission_set_priority(
                submission_id=s.pk, priority=data["priority"], actor=request.user, reason=data["reason"]
            ),
        )

    return _with_form(
        modeladmin,
        request,
        queryset,
        form_class=PriorityForm,
        title="Change priority",
        action="change_priority",
        apply=apply,
    )


@admin.action(description="Disqualify with a reason…")
def disqualify(modeladmin, request, queryset):
    def apply(data):
        _each(
            modeladmin,
            request,
            queryset,
            "Disqualified",
            lambda s: submission_disqualify(submission_id=s.pk, actor=request.user, reason=data["reason"]),
        )

    return _with_form(
        modeladmin, request, queryset, form_class=DisqualifyForm, title="Disqualify", action="disqualify", apply=apply
    )


SUBMISSION_ORGANIZER_ACTIONS = [rerun_evaluation, cancel_evaluation, requeue_evaluation, change_priority, disqualify]


class SuiteResultInline(admin.TabularInline):
    model = SuiteResult
    extra = 0
    fields = ["role", "suite", "engine_version", "helm_version", "raw_output_path", "finished_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(EvaluationJob)
class EvaluationJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "submission",
        "state",
        "attempts",
        "worker_lost_count",
        "worker_hostname",
        "heartbeat_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["state", "submission__track"]
    search_fields = ["submission__id", "submission__team__name", "task_id", "worker_hostname"]
    raw_id_fields = ["submission"]
    readonly_fields = [f.name for f in EvaluationJob._meta.fields]
    inlines = [SuiteResultInline]


@admin.register(SuiteResult)
class SuiteResultAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "role", "suite", "finished_at"]
    list_filter = ["role", "suite"]
    raw_id_fields = ["job"]
    readonly_fields = [f.name for f in SuiteResult._meta.fields]


@admin.register(MetricRecord)
class MetricRecordAdmin(admin.ModelAdmin):
    list_display = ["suite_result", "run", "metric", "split", "perturbation", "value", "count"]
    list_filter = ["metric", "split"]
    search_fields = ["run", "metric"]
    raw_id_fields = ["suite_result"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["hostname", "gpu", "queues", "current_job", "last_seen_at"]
