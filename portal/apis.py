"""The portal's API: challenge and tracks (public), me and my tokens, teams and invitations, student review.

Views stay thin: an input serializer parses, a selector fetches (404 at the edge), one service writes,
an output serializer answers. Errors leave through portal.api.errors in the one format.
"""

from django.contrib.auth import get_user_model
from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import permissions, selectors, services
from portal import serializers as s
from portal.api.selectors import api_token_list, challenge_current_with_tracks, profiles_for_review, track_by_slug
from portal.api.services import api_token_create, api_token_revoke
from portal.api.utils import parse, parse_query
from portal.errors import NotFound, PermissionDenied
from portal.models import Challenge, Profile, Team

# Challenge and tracks (public) ---------------------------------------------------------------


class ChallengeApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=s.ChallengeOutputSerializer, summary="The challenge, its dates, tracks and prizes")
    def get(self, request: Request) -> Response:
        challenge = challenge_current_with_tracks()
        if challenge is None:
            raise NotFound("No challenge is running.")
        return Response(s.ChallengeOutputSerializer(challenge).data)


class TrackListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=s.TrackOutputSerializer(many=True), summary="The tracks and their prize tables")
    def get(self, request: Request) -> Response:
        challenge = challenge_current_with_tracks()
        return Response(s.TrackOutputSerializer(challenge.track_list if challenge else [], many=True).data)


class TrackDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=s.TrackOutputSerializer, summary="One track")
    def get(self, request: Request, slug: str) -> Response:
        track = track_by_slug(slug)
        if track is None:
            raise NotFound(f"No track '{slug}'.")
        return Response(s.TrackOutputSerializer(track).data)


# Me: profile, evidence, tokens, invitations --------------------------------------------------


def _challenge() -> Challenge:
    challenge = selectors.challenge_current()
    if challenge is None:
        raise NotFound("No challenge is running.")
    return challenge


def _me(user) -> dict:
    profile = services.profile_ensure(user=user)
    challenge = selectors.challenge_current()
    team = selectors.team_of_user(user, challenge)
    return {
        "id": user.pk,
        "email": user.email,
        "is_organizer": permissions.is_organizer(user),
        "profile": profile,
        "team": {"id": team.pk, "name": team.name, "slug": team.slug, "is_captain": team.captain_id == user.pk}
        if team
        else None,
    }


class MeApi(APIView):
    @extend_schema(responses=s.MeOutputSerializer, summary="Who I am: profile, student status, team")
    def get(self, request: Request) -> Response:
        return Response(s.MeOutputSerializer(_me(request.user)).data)

    @extend_schema(
        request=s.ProfileUpdateInputSerializer,
        responses=s.MeOutputSerializer,
        summary="Update my profile",
        description="Fields left out keep their value. `is_student: false` withdraws a student declaration; "
        "declaring `true` needs evidence (POST /me/student-evidence/).",
    )
    def patch(self, request: Request) -> Response:
        data = parse(s.ProfileUpdateInputSerializer, request)
        profile = services.profile_ensure(user=request.user)
        services.profile_update(
            user=request.user,
            display_name=data.get("display_name", profile.display_name),
            affiliation=data.get("affiliation", profile.affiliation),
            country=data.get("country", profile.country),
            is_student=data.get("is_student", profile.student_status != Profile.StudentStatus.NOT_STUDENT),
        )
        return Response(s.MeOutputSerializer(_me(request.user)).data)


class StudentEvidenceUploadApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": s.EvidenceUploadInputSerializer},
        responses=s.MeOutputSerializer,
        summary="Upload evidence of student status",
        description="Declares me a student and (re)starts the organizers' review. PDF, PNG or JPEG.",
    )
    def post(self, request: Request) -> Response:
        data = parse(s.EvidenceUploadInputSerializer, request)
        profile = services.profile_ensure(user=request.user)
        services.profile_update(
            user=request.user,
            display_name=profile.display_name,
            affiliation=profile.affiliation,
            country=profile.country,
            is_student=True,
            evidence=data["file"],
        )
        return Response(s.MeOutputSerializer(_me(request.user)).data)


class StudentEvidenceDownloadApi(APIView):
    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        summary="A student's evidence file (its owner and organizers only)",
    )
    def get(self, request: Request, profile_id: int):
        if not permissions.is_organizer(request.user) and profile_id != services.profile_ensure(user=request.user).pk:
            raise NotFound("No evidence here.")  # Others' files do not even exist for you.
        profile = selectors.evidence_profile_for(request.user, profile_id)
        name = profile.student_evidence.name
        try:
            handle = profile.student_evidence.open("rb")
        except OSError:
            raise NotFound("The evidence file is missing from storage; upload it again.")
        response = FileResponse(handle, content_type=services.evidence_content_type(name))
        response["Content-Disposition"] = (
            f'attachment; filename="student-evidence-{profile.pk}.{name.rsplit(".", 1)[-1]}"'
        )
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class ApiTokenListCreateApi(APIView):
    @extend_schema(responses=s.ApiTokenOutputSerializer(many=True), summary="My API tokens")
    def get(self, request: Request) -> Response:
        return Response(s.ApiTokenOutputSerializer(api_token_list(user=request.user), many=True).data)

    @extend_schema(
        request=s.ApiTokenCreateInputSerializer,
        responses={201: s.ApiTokenCreatedOutputSerializer},
        summary="Create an API token (browser session only)",
        description="Tokens cannot mint tokens: a leaked token must not outlive its revocation.",
    )
    def post(self, request: Request) -> Response:
        if request.auth is not None:
            raise PermissionDenied("Create tokens from your profile page or a browser session, not with a token.")
        data = parse(s.ApiTokenCreateInputSerializer, request)
        token, secret = api_token_create(user=request.user, **data)
        token.token = secret
        return Response(s.ApiTokenCreatedOutputSerializer(token).data, status=status.HTTP_201_CREATED)


class ApiTokenRevokeApi(APIView):
    @extend_schema(request=None, responses={204: None}, summary="Revoke one of my API tokens")
    def delete(self, request: Request, token_id: int) -> Response:
        api_token_revoke(user=request.user, token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MyInvitationListApi(APIView):
    @extend_schema(responses=s.MyInvitationOutputSerializer(many=True), summary="Invitations sent to my e-mail")
    def get(self, request: Request) -> Response:
        return Response(s.MyInvitationOutputSerializer(selectors.invitations_for_user(request.user), many=True).data)


class MyInvitationRespondApi(APIView):
    @extend_schema(request=None, responses=s.MeOutputSerializer, summary="Accept or decline an e-mail invitation")
    def post(self, request: Request, invitation_id: int, action: str) -> Response:
        invitation = selectors.invitation_for_user(request.user, invitation_id)
        _respond(request.user, invitation, action)
        return Response(s.MeOutputSerializer(_me(request.user)).data)


# Invitations by token ------------------------------------------------------------------------


def _respond(user, invitation, action: str) -> None:
    if action == "accept":
        services.invitation_accept(user=user, invitation=invitation)
    else:
        services.invitation_decline(user=user, invitation=invitation)


class InvitationPreviewApi(APIView):
    @extend_schema(responses=s.InvitationPreviewOutputSerializer, summary="What an invitation token is for")
    def get(self, request: Request, token: str) -> Response:
        return Response(s.InvitationPreviewOutputSerializer(selectors.invitation_by_token(token)).data)


class InvitationRespondApi(APIView):
    @extend_schema(request=None, responses=s.MeOutputSerializer, summary="Accept or decline an invitation by token")
    def post(self, request: Request, token: str, action: str) -> Response:
        _respond(request.user, selectors.invitation_by_token(token), action)
        return Response(s.MeOutputSerializer(_me(request.user)).data)


# Teams ---------------------------------------------------------------------------------------


def _team_response(request: Request, team: Team, *, status_code: int = 200) -> Response:
    team = selectors.team_get(challenge=team.challenge, slug=team.slug)  # annotated and prefetched
    if not permissions.can_view_team_private(request.user, team):
        return Response(s.TeamOutputSerializer(team).data, status=status_code)
    team.eligibility = selectors.team_student_eligibility(team)
    team.pending_invitations = (
        list(selectors.team_pending_invitations(team)) if permissions.can_manage_team(request.user, team) else []
    )
    return Response(s.PrivateTeamOutputSerializer(team).data, status=status_code)


class MyTeamApi(APIView):
    @extend_schema(responses=s.PrivateTeamOutputSerializer, summary="My team, its members and eligibility")
    def get(self, request: Request) -> Response:
        team = selectors.team_of_user(request.user, _challenge())
        if team is None:
            raise NotFound("You are not in a team yet: create one or accept an invitation.", code="no_team")
        return _team_response(request, team)

    @extend_schema(
        request=s.TeamCreateInputSerializer, responses={201: s.PrivateTeamOutputSerializer}, summary="Create a team"
    )
    def post(self, request: Request) -> Response:
        data = parse(s.TeamCreateInputSerializer, request)
        team = services.team_create(user=request.user, challenge=_challenge(), name=data["name"])
        return _team_response(request, team, status_code=status.HTTP_201_CREATED)


class TeamDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        responses=s.PrivateTeamOutputSerializer,
        summary="A team",
        description="Everyone sees names and student eligibility; members and organizers also see e-mails, "
        "student statuses, what eligibility misses and (captain) pending invitations.",
    )
    def get(self, request: Request, slug: str) -> Response:
        return _team_response(request, selectors.team_get(challenge=_challenge(), slug=slug))


class TeamApiMixin:
    """Team actions: the team must exist; the service decides who may act."""

    def team(self, slug: str) -> Team:
        team = selectors.team_get(challenge=_challenge(), slug=slug)
        if not permissions.can_view_team_private(self.request.user, team):
            raise PermissionDenied("Only the team's members can do this.")
        return team

    def member(self, team: Team, user_id: int):
        user = get_user_model().objects.filter(pk=user_id, memberships__team=team).first()
        if user is None:
            raise NotFound("That person is not a member of this team.", code="not_member")
        return user


class TeamInvitationListCreateApi(TeamApiMixin, APIView):
    @extend_schema(responses=s.InvitationOutputSerializer(many=True), summary="Pending invitations of a team")
    def get(self, request: Request, slug: str) -> Response:
        team = self.team(slug)
        if not permissions.can_manage_team(request.user, team):
            raise PermissionDenied("Only the team's captain sees its invitations.")
        return Response(s.InvitationOutputSerializer(selectors.team_pending_invitations(team), many=True).data)

    @extend_schema(
        request=s.InvitationCreateInputSerializer,
        responses={201: s.InvitationCreatedOutputSerializer},
        summary="Invite by e-mail, or create a shareable link (captain)",
    )
    def post(self, request: Request, slug: str) -> Response:
        data = parse(s.InvitationCreateInputSerializer, request)
        invitation, token = services.invitation_create(
            actor=request.user,
            team=self.team(slug),
            email=data.get("email", ""),
            site_url=request.build_absolute_uri("/"),
        )
        invitation.token = token
        invitation.link = request.build_absolute_uri(reverse("invitation_detail", args=[token]))
        return Response(s.InvitationCreatedOutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class TeamInvitationRevokeApi(TeamApiMixin, APIView):
    @extend_schema(request=None, responses={204: None}, summary="Withdraw a pending invitation (captain)")
    def delete(self, request: Request, slug: str, invitation_id: int) -> Response:
        invitation = self.team(slug).invitations.filter(pk=invitation_id).first()
        if invitation is None:
            raise NotFound("No such invitation.")
        services.invitation_revoke(actor=request.user, invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamLeaveApi(TeamApiMixin, APIView):
    @extend_schema(request=None, responses={204: None}, summary="Leave the team")
    def post(self, request: Request, slug: str) -> Response:
        services.team_leave(user=request.user, team=self.team(slug))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamMemberRemoveApi(TeamApiMixin, APIView):
    @extend_schema(
        request=s.MemberRemoveInputSerializer, responses=s.PrivateTeamOutputSerializer, summary="Remove a member"
    )
    def post(self, request: Request, slug: str, user_id: int) -> Response:
        data = parse(s.MemberRemoveInputSerializer, request)
        team = self.team(slug)
        team = services.team_member_remove(
            actor=request.user, team=team, user=self.member(team, user_id), reason=data["reason"]
        )
        return _team_response(request, team)


class TeamCaptainApi(TeamApiMixin, APIView):
    @extend_schema(
        request=s.CaptainTransferInputSerializer,
        responses=s.PrivateTeamOutputSerializer,
        summary="Hand over the captaincy (captain)",
    )
    def post(self, request: Request, slug: str) -> Response:
        data = parse(s.CaptainTransferInputSerializer, request)
        team = self.team(slug)
        team = services.team_captain_transfer(
            actor=request.user, team=team, new_captain=self.member(team, data["user_id"])
        )
        return _team_response(request, team)


# Organizers ----------------------------------------------------------------------------------


class OrganizerProfileListApi(GenericAPIView):
    permission_classes = [permissions.IsOrganizer]
    serializer_class = s.ProfileReviewOutputSerializer

    @extend_schema(
        operation_id="organizer_profiles_list",
        parameters=[s.ProfileReviewQuerySerializer],
        responses=s.ProfileReviewOutputSerializer(many=True),
        summary="Profiles with student evidence (organizers)",
    )
    def get(self, request: Request) -> Response:
        query = parse_query(s.ProfileReviewQuerySerializer, request)
        page = self.paginate_queryset(profiles_for_review(student_status=query.get("student_status")))
        return self.get_paginated_response(s.ProfileReviewOutputSerializer(page, many=True).data)


class OrganizerStudentReviewApi(APIView):
    permission_classes = [permissions.IsOrganizer]

    @extend_schema(
        request=s.StudentReviewInputSerializer,
        responses=s.ProfileReviewOutputSerializer,
        summary="Verify or reject a student's evidence (organizers)",
        description="A rejection needs a reason; the participant sees it.",
    )
    def post(self, request: Request, profile_id: int) -> Response:
        data = parse(s.StudentReviewInputSerializer, request)
        if not Profile.objects.filter(pk=profile_id).exists():
            raise NotFound("No such profile.")
        review = services.student_verify if data["decision"] == "verify" else services.student_reject
        (profile,) = review(actor=request.user, profile_ids=[profile_id], reason=data["reason"])
        return Response(s.ProfileReviewOutputSerializer(profile).data)
