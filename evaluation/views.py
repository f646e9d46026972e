"""Submission pages: create, upload, list, detail. Views authorise, then call one service."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from evaluation import selectors
from evaluation.forms import SubmissionForm
from evaluation.models import Submission
from evaluation.services import submission_create, submission_set_final
from evaluation.services.submissions import QuotaExceeded
from portal.errors import NotFound, ServiceError

TERMINAL = {
    Submission.Status.SCORED,
    Submission.Status.FAILED,
    Submission.Status.CANCELLED,
    Submission.Status.DISQUALIFIED,
}


def _visible(request: HttpRequest, submission_id: int) -> Submission:
    try:
        return selectors.submission_get_visible(user=request.user, submission_id=submission_id)
    except NotFound:
        raise Http404("No such submission.")


def _team_or_redirect(request: HttpRequest):
    challenge, team = selectors.current_team(user=request.user)
    if team is None:
        messages.info(request, "Join or create a team to submit.")
    return challenge, team


@login_required
@require_http_methods(["GET", "POST"])
def submission_new(request: HttpRequest) -> HttpResponse:
    challenge, team = _team_or_redirect(request)
    if team is None:
        return redirect("my_team")
    form = SubmissionForm(request.POST or None, challenge=challenge)
    if request.method == "POST" and form.is_valid():
        try:
            submission = submission_create(user=request.user, **form.cleaned_data)
        except QuotaExceeded as exc:
            form.add_error(None, exc.message)
            return render(request, "evaluation/submission_new.html", _new_context(form, team), status=429)
        except ServiceError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            return render(request, "evaluation/submission_new.html", _new_context(form, team), status=exc.status_code)
        return redirect("submission_upload", submission_id=submission.pk)
    return render(request, "evaluation/submission_new.html", _new_context(form, team))


def _new_context(form, team) -> dict:
    return {"form": form, "team": team, "quotas": selectors.team_quotas(team=team)}


@login_required
def submission_upload(request: HttpRequest, submission_id: int) -> HttpResponse:
    submission = _visible(request, submission_id)
    if (
        submission.status != Submission.Status.UPLOADING
        or not submission.team.memberships.filter(user=request.user).exists()
    ):
        return redirect("submission_detail", submission_id=submission.pk)
    return render(
        request,
        "evaluation/submission_upload.html",
        {"submission": submission, "open_upload": selectors.submission_open_upload(submission=submission)},
    )


@login_required
def submission_list(request: HttpRequest) -> HttpResponse:
    challenge, team = _team_or_redirect(request)
    if team is None:
        return redirect("my_team")
    return render(request, "evaluation/submission_list.html", team_submissions_context(team))


def team_submissions_context(team) -> dict:
    """What templates/evaluation/partials/team_submissions.html needs (the team page includes it too)."""
    return {
        "team": team,
        "team_submissions": selectors.submissions_for_team(team=team),
        "quotas": selectors.team_quotas(team=team),
    }


@login_required
def submission_detail(request: HttpRequest, submission_id: int) -> HttpResponse:
    submission = _visible(request, submission_id)
    context = {
        "submission": submission,
        "events": submission.events.select_related("actor").all(),
        "open_upload": selectors.submission_open_upload(submission=submission),
        "terminal": submission.status in TERMINAL,
    }
    if request.headers.get("HX-Request"):
        return render(request, "evaluation/partials/submission_status.html", context)
    return render(request, "evaluation/submission_detail.html", context)


@login_required
@require_POST
def submission_final(request: HttpRequest, submission_id: int) -> HttpResponse:
    submission = _visible(request, submission_id)
    try:
        submission_set_final(
            user=request.user, team=submission.team, track=submission.track, submission_id=submission.pk
        )
        messages.success(request, f"Submission #{submission.pk} is now your final entry on {submission.track.name}.")
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("submission_detail", submission_id=submission.pk)
