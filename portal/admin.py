"""Organizers' admin: challenge, tracks and prizes, profiles with the student review, teams, audit trail."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from portal.errors import ServiceError
from portal.forms import RejectEvidenceForm
from portal.models import AuditEvent, Challenge, Invitation, Membership, Prize, Profile, Team, Track
from portal.services import audit_record, student_reject, student_verify

admin.site.site_header = "LLM Efficiency Challenge · organizers"
admin.site.site_title = "Organizers"
admin.site.index_title = "Run the challenge"


class TrackInline(admin.TabularInline):
    model = Track
    extra = 0
    fields = ("order", "slug", "name", "gpu_model", "gpu_memory_gb", "gpu_price_usd", "finetune_hours_limit")
    show_change_link = True


@admin.register(Challenge)
class ChallengeAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "is_active", "starts_at", "submission_deadline", "timezone", "max_team_size")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [TrackInline]
    fieldsets = (
        (None, {"fields": ("name", "slug", "tagline", "is_active")}),
        ("Text", {"fields": ("description", "rules")}),
        (
            "Dates",
            {
                "fields": (
                    "timezone",
                    "starts_at",
                    "submissions_open_at",
                    "submission_deadline",
                    "winners_notified_at",
                    "presentation_at",
                ),
                "description": "Stored in UTC; pages show them in the challenge's timezone and the visitor's.",
            },
        ),
        ("Teams and submissions", {"fields": ("max_team_size", "daily_submission_quota")}),
        ("Scoring", {"fields": ("scoring_mode", "open_weight", "hidden_weight", "hidden_revealed_at")}),
    )


class PrizeInline(admin.TabularInline):
    model = Prize
    extra = 0


@admin.register(Track)
class TrackAdmin(admin.ModelAdmin):
    list_display = ("name", "challenge", "slug", "gpu_model", "gpu_memory_gb", "gpu_price_usd", "finetune_hours_limit")
    list_filter = ("challenge",)
    search_fields = ("name", "slug", "gpu_model")
    inlines = [PrizeInline]
    readonly_fields = ("finalized_at", "finalized_by")


@admin.register(Prize)
class PrizeAdmin(admin.ModelAdmin):
    list_display = ("track", "kind", "place", "amount_usd", "count")
    list_filter = ("kind", "track__challenge", "track")


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("name", "email", "affiliation", "country", "student_status", "evidence_link", "review_links")
    list_filter = ("student_status", "country")
    search_fields = ("display_name", "user__email", "user__username", "affiliation")
    list_select_related = ("user",)
    actions = ["verify_students", "reject_students"]
    readonly_fields = (
        "user",
        "evidence_link",
        "student_status",
        "student_evidence_uploaded_at",
        "student_reviewed_by",
        "student_reviewed_at",
        "student_rejection_reason",
        "review_links",
    )
    fields = (
        "user",
        "display_name",
        "affiliation",
        "country",
        "student_status",
        "evidence_link",
        "student_evidence_uploaded_at",
        "student_reviewed_by",
        "student_reviewed_at",
        "student_rejection_reason",
        "review_links",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # Profiles come with accounts.

    @admin.display(description="e-mail", ordering="user__email")
    def email(self, obj: Profile) -> str:
        return obj.user.email

    @admin.display(description="evidence")
    def evidence_link(self, obj: Profile) -> str:
        if not obj.student_evidence:
            return "—"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">open file</a>', reverse("evidence_download", args=[obj.pk])
        )

    @admin.display(description="review")
    def review_links(self, obj: Profile) -> str:
        if not obj.student_evidence:
            return ""
        return format_html(
            '<a href="{}">verify</a> · <a href="{}">reject</a>',
            reverse("admin:portal_profile_verify", args=[obj.pk]),
            reverse("admin:portal_profile_reject", args=[obj.pk]),
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/verify/", wrap(self.verify_one), name="portal_profile_verify"),
            path("<int:pk>/reject/", wrap(self.reject_one), name="portal_profile_reject"),
        ] + super().get_urls()

    def _changelist(self) -> str:
        return reverse("admin:portal_profile_changelist")

    def verify_one(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST":
            queryset = Profile.objects.filter(pk=pk)
            return self._confirm(request, queryset, verify=True)
        return self._do_verify(request, [pk])

    def reject_one(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._reject(request, Profile.objects.filter(pk=pk))

    def _do_verify(self, request: HttpRequest, ids: list[int]) -> HttpResponse:
        try:
            done = student_verify(actor=request.user, profile_ids=ids)
        except ServiceError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            self.message_user(
                request, f"Verified {len(done)} student{'s' if len(done) != 1 else ''}.", messages.SUCCESS
            )
        return HttpResponseRedirect(self._changelist())

    def _confirm(self, request: HttpRequest, queryset: QuerySet[Profile], verify: bool) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Verify student status",
            "profiles": queryset.select_related("user"),
            "opts": self.model._meta,
            "verify": verify,
        }
        return TemplateResponse(request, "admin/portal/profile/review.html", context)

    @admin.action(description="Verify student status of the selected participants")
    def verify_students(self, request: HttpRequest, queryset: QuerySet[Profile]) -> HttpResponse | None:
        return self._do_verify(request, list(queryset.values_list("pk", flat=True)))

    @admin.action(description="Reject student evidence of the selected participants (asks for a reason)")
    def reject_students(self, request: HttpRequest, queryset: QuerySet[Profile]) -> HttpResponse | None:
        return self._reject(request, queryset)

    def _reject(self, request: HttpRequest, queryset: QuerySet[Profile]) -> HttpResponse:
        form = RejectEvidenceForm(request.POST if "confirm_reject" in request.POST else None)
        if form.is_valid():
            try:
                done = student_reject(
                    actor=request.user,
                    profile_ids=list(queryset.values_list("pk", flat=True)),
                    reason=form.cleaned_data["reason"],
                )
            except ServiceError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(request, f"Rejected the evidence of {len(done)} participant(s).", messages.WARNING)
            return HttpResponseRedirect(self._changelist())
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject student evidence",
            "profiles": queryset.select_related("user"),
            "opts": self.model._meta,
            "form": form,
            "verify": False,
            "action_name": request.POST.get("action", ""),
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
        }
        return TemplateResponse(request, "admin/portal/profile/review.html", context)


class MembershipFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        team: Team = self.instance
        if team.challenge_id is None:
            return
        for form in self.forms:
            user = form.cleaned_data.get("user") if form.cleaned_data else None
            if user is None or form.cleaned_data.get("DELETE"):
                continue
            other = Membership.objects.filter(user=user, challenge_id=team.challenge_id).exclude(team=team)
            if other.exists():
                form.add_error("user", f"{user} is already in team {other.first().team}.")


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    extra = 0
    fields = ("user", "joined_at")
    readonly_fields = ("joined_at",)
    autocomplete_fields = ("user",)


class InvitationInline(admin.TabularInline):
    model = Invitation
    extra = 0
    fields = ("email", "status", "invited_by", "created_at", "expires_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "challenge", "captain", "member_count", "verified_count", "student_eligible", "created_at")
    list_filter = ("challenge",)
    search_fields = ("name", "slug", "captain__email", "memberships__user__email")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("captain",)
    inlines = [MembershipInline, InvitationInline]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).with_eligibility().select_related("challenge", "captain")

    @admin.display(description="members", ordering="member_count")
    def member_count(self, obj: Team) -> int:
        return obj.member_count

    @admin.display(description="verified students", ordering="verified_count")
    def verified_count(self, obj: Team) -> int:
        return obj.verified_count

    @admin.display(description="student-eligible", boolean=True, ordering="student_eligible")
    def student_eligible(self, obj: Team) -> bool:
        return obj.student_eligible

    def save_model(self, request, obj: Team, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if form.changed_data:
            audit_record(
                actor=request.user,
                action="team.changed_by_organizer" if change else "team.created_by_organizer",
                team=obj,
                obj=obj,
                data={"fields": form.changed_data},
            )

    def save_formset(self, request, form, formset, change: bool) -> None:
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        team: Team = form.instance
        instances = formset.save(commit=False)
        for membership in formset.deleted_objects:
            audit_record(
                actor=request.user,
                action="team.member_removed",
                subject_user=membership.user,
                team=team,
                obj=team,
                reason="by an organizer in the admin",
            )
            membership.delete()
        for membership in instances:
            is_new = membership.pk is None
            membership.challenge = team.challenge  # Keeps the one-team-per-challenge constraint meaningful.
            membership.save()
            if is_new:
                audit_record(
                    actor=request.user,
                    action="team.member_added",
                    subject_user=membership.user,
                    team=team,
                    obj=team,
                    reason="by an organizer in the admin",
                )
        formset.save_m2m()


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("team", "email", "status", "invited_by", "created_at", "expires_at")
    list_filter = ("status", "team__challenge")
    search_fields = ("email", "team__name")
    readonly_fields = ("token_hash", "responded_by", "responded_at")
    list_select_related = ("team", "invited_by")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail is written by services and never edited."""

    list_display = ("created_at", "actor", "action", "subject_user", "team", "object_repr", "reason")
    list_filter = ("action", ("actor", admin.RelatedOnlyFieldListFilter), "created_at")
    search_fields = ("action", "object_repr", "reason", "actor__email", "subject_user__email", "team__name")
    date_hierarchy = "created_at"
    list_select_related = ("actor", "subject_user", "team")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
