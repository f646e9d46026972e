"""Pages of the evaluation pipeline: a team's live progress and the organizers' queue page."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from evaluation.models import Submission
from evaluation.selectors import evaluation_queue_overview, submission_progress
from evaluation.services import submission_cancel
from portal.errors import ServiceError
from portal.models import Membership


def _submission_for(request: HttpRequest, pk: int) -> Submission:
    """The submission if the user is on its team or an organizer; 404 otherwise (no existence leak)."""
    submission = Submission.objects.select_related("team", "track").filter(pk=pk).first()
    if submission is None:
        raise Http404
    if request.user.is_staff:
        return submission
    if not Membership.objects.filter(team_id=submission.team_id, user=request.user).exists():
        raise Http404
    return submission


@login_required
def submission_progress_page(request: HttpRequest, pk: int) -> HttpResponse:
    submission = _submission_for(request, pk)
    progress = submission_progress(submission=submission, show_hidden=request.user.is_staff)
    return render(request, "evaluation/progress.html", {"p": progress, "submission": submission})


@login_required
def submission_progress_partial(request: HttpRequest, pk: int) -> HttpResponse:
    submission = _submission_for(request, pk)
    progress = submission_progress(submission=submission, show_hidden=request.user.is_staff)
    return render(request, "evaluation/partials/progress.html", {"p": progress, "submission": submission})


@login_required
@require_POST
def submission_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    submission = _submission_for(request, pk)
    try:
        submission_cancel(
            submission_id=submission.pk,
            actor=request.user,
            reason=f"Cancelled by {request.user.email or request.user}.",
        )
        messages.success(request, f"Submission #{submission.pk} was cancelled.")
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("submission_progress", pk=submission.pk)


@staff_member_required
def evaluation_queue_page(request: HttpRequest) -> HttpResponse:
    return render(request, "evaluation/queue.html", evaluation_queue_overview())
