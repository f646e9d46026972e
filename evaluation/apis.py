"""The submissions API: create (then upload through tus), list, detail with live progress, cancel, final entry,
quota; and the organizers' rerun, cancel, disqualify and priority.

Views stay thin: an input serializer parses, a permission-aware selector fetches (404 at the edge), one
service writes, an output serializer answers.
"""

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from evaluation import selectors, services
from evaluation import serializers as s
from evaluation.models import Submission
from leaderboard.selectors import submission_scores
from portal import permissions
from portal.api.throttling import AnonThrottle, SubmissionThrottle, UserThrottle
from portal.api.utils import parse, parse_query
from portal.errors import NotFound, PermissionDenied


def _submission(request: Request, submission_id: int) -> Submission:
    """The submission if `request.user` may see it (its team, organizers); 404 for everyone else."""
    return selectors.submission_get_visible(user=request.user, submission_id=submission_id)


def _with_scores(request: Request, submission: Submission) -> Submission:
    submission.scores = submission_scores(user=request.user, submission=submission)
    return submission


def _detail(request: Request, submission: Submission) -> dict:
    progress = selectors.submission_progress(
        submission=submission, show_hidden=permissions.can_see_hidden_details(request.user)
    )
    upload = None
    if submission.status == Submission.Status.UPLOADING:
        open_upload = selectors.submission_open_upload(submission=submission)
        upload = {
            "creation_url": reverse("tus-uploads"),
            "metadata": {"submission": str(submission.pk)},
            "url": reverse("tus-upload", args=[open_upload.pk]) if open_upload else None,
            "offset": open_upload.offset if open_upload else None,
            "length": open_upload.length if open_upload else None,
        }
    submission.history = list(submission.events.all())
    submission.queue = progress["queue"]
    submission.progress = progress if progress["job"] is not None else None
    submission.log_tail = progress["log_tail"] or ""
    submission.upload = upload
    return s.SubmissionDetailOutputSerializer(_with_scores(request, submission)).data


def _team(request: Request):
    challenge, team = selectors.current_team(user=request.user)
    if challenge is None:
        raise NotFound("No challenge is running.")
    return challenge, team


def _visible_submissions(request: Request, query: dict) -> QuerySet[Submission]:
    queryset = permissions.submissions_visible_to(
        request.user, Submission.objects.select_related("team", "track", "base_model")
    )
    if not permissions.is_organizer(request.user):
        _, team = _team(request)
        queryset = queryset.filter(team=team) if team else queryset.none()
    if query.get("track"):
        queryset = queryset.filter(track__slug=query["track"])
    if query.get("status"):
        queryset = queryset.filter(status=query["status"])
    if query.get("team"):
        queryset = queryset.filter(team__slug=query["team"])
    return queryset.order_by("-created_at", "-id")


class SubmissionListCreateApi(GenericAPIView):
    throttle_classes = [AnonThrottle, UserThrottle, SubmissionThrottle]
    serializer_class = s.SubmissionOutputSerializer

    @extend_schema(
        operation_id="submissions_list",
        parameters=[s.SubmissionListQuerySerializer],
        responses=s.SubmissionOutputSerializer(many=True),
        summary="My team's submissions (organizers: everyone's)",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(s.SubmissionListQuerySerializer, request)
        page = self.paginate_queryset(_visible_submissions(request, query))
        rows = [_with_scores(request, submission) for submission in page]
        return self.get_paginated_response(s.SubmissionOutputSerializer(rows, many=True).data)

    @extend_schema(
        request=s.SubmissionCreateInputSerializer,
        responses={201: s.SubmissionDetailOutputSerializer},
        summary="Create a submission, then upload its archive through tus",
        description="The answer's `upload` says where: POST to `upload.creation_url` (tus creation) with "
        "`Upload-Length` and `upload.metadata` as Upload-Metadata, then PATCH the bytes. "
        "Counts toward the daily quota once the upload finishes.",
    )
    def post(self, request: Request) -> Response:
        data = parse(s.SubmissionCreateInputSerializer, request)
        submission = services.submission_create(user=request.user, **data)
        return Response(_detail(request, _submission(request, submission.pk)), status=status.HTTP_201_CREATED)


class SubmissionDetailApi(APIView):
    @extend_schema(
        responses=s.SubmissionDetailOutputSerializer,
        summary="A submission: status history, queue position, progress, log tail, scores",
    )
    def get(self, request: Request, submission_id: int) -> Response:
        return Response(_detail(request, _submission(request, submission_id)))


class SubmissionCancelApi(APIView):
    @extend_schema(
        request=s.ReasonInputSerializer,
        responses=s.SubmissionDetailOutputSerializer,
        summary="Cancel a queued or running evaluation of my team",
    )
    def post(self, request: Request, submission_id: int) -> Response:
        data = parse(s.ReasonInputSerializer, request)
        submission = _submission(request, submission_id)
        if not permissions.can_act_on_submission(request.user, submission):
            raise PermissionDenied("Only members of the submission's team can cancel it.")
        who = request.user.email or request.user.get_username()
        services.submission_cancel(
            submission_id=submission.pk, actor=request.user, reason=data["reason"] or f"Cancelled by {who}."
        )
        return Response(_detail(request, _submission(request, submission_id)))


class SubmissionFinalApi(APIView):
    @extend_schema(
        request=None,
        responses=s.SubmissionDetailOutputSerializer,
        summary="Choose this submission as my team's final entry on its track",
    )
    def post(self, request: Request, submission_id: int) -> Response:
        submission = _submission(request, submission_id)
        services.submission_set_final(
            user=request.user, team=submission.team, track=submission.track, submission_id=submission.pk
        )
        return Response(_detail(request, _submission(request, submission_id)))


class SubmissionQuotaApi(APIView):
    @extend_schema(
        parameters=[s.TrackQuerySerializer],
        responses=s.QuotaOutputSerializer(many=True),
        summary="Submissions my team has left today, per track, and its final entries",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(s.TrackQuerySerializer, request)
        _, team = _team(request)
        if team is None:
            raise NotFound("You are not in a team yet: create one or accept an invitation.", code="no_team")
        rows = [
            {
                "track": track.slug,
                "limit": quota.limit,
                "used": quota.used,
                "remaining": quota.remaining,
                "resets_at": quota.resets_at,
                "final_entry": final.pk if final else None,
            }
            for track, quota, final in selectors.team_quotas(team=team)
            if not query.get("track") or track.slug == query["track"]
        ]
        if query.get("track") and not rows:
            raise NotFound(f"No track '{query['track']}'.")
        return Response(s.QuotaOutputSerializer(rows, many=True).data)


# Organizers ----------------------------------------------------------------------------------


class _OrganizerSubmissionApi(APIView):
    """One organizer action on one submission: parse `input_serializer`, call `service`, answer the detail."""

    permission_classes = [permissions.IsOrganizer]
    input_serializer: type = s.ReasonInputSerializer
    service = staticmethod(lambda **kwargs: None)

    def post(self, request: Request, submission_id: int) -> Response:
        if not Submission.objects.filter(pk=submission_id).exists():
            raise NotFound("No such submission.")
        data = parse(self.input_serializer, request)
        self.service(submission_id=submission_id, actor=request.user, **data)
        return Response(_detail(request, _submission(request, submission_id)))


def _organizer_schema(input_serializer: type, summary: str):
    return extend_schema_view(
        post=extend_schema(request=input_serializer, responses=s.SubmissionDetailOutputSerializer, summary=summary)
    )


@_organizer_schema(s.ReasonInputSerializer, "Evaluate a scored, failed or cancelled submission again (organizers)")
class OrganizerSubmissionRerunApi(_OrganizerSubmissionApi):
    service = staticmethod(services.submission_rerun)


@_organizer_schema(s.ReasonInputSerializer, "Cancel any queued or running evaluation (organizers)")
class OrganizerSubmissionCancelApi(_OrganizerSubmissionApi):
    service = staticmethod(services.submission_cancel)


@_organizer_schema(s.RequiredReasonInputSerializer, "Disqualify a submission with a reason the team reads (organizers)")
class OrganizerSubmissionDisqualifyApi(_OrganizerSubmissionApi):
    input_serializer = s.RequiredReasonInputSerializer
    service = staticmethod(services.submission_disqualify)


@_organizer_schema(s.PriorityInputSerializer, "Change a submission's priority within its queue (organizers)")
class OrganizerSubmissionPriorityApi(_OrganizerSubmissionApi):
    input_serializer = s.PriorityInputSerializer
    service = staticmethod(services.submission_set_priority)
