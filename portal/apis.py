"""The portal's API: the challenge and its tracks (public), personal API tokens.

Views stay thin: an input serializer parses, a selector fetches (404 at the edge), one service writes,
an output serializer answers. Errors leave through portal.api.errors in the one format.
"""

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.api.selectors import api_token_list, challenge_current_with_tracks, track_by_slug
from portal.api.services import api_token_create, api_token_revoke
from portal.errors import NotFound, PermissionDenied

# Output serializers ---------------------------------------------------------------------------


class PrizeOutputSerializer(serializers.Serializer):
    kind = serializers.CharField()
    place = serializers.IntegerField(allow_null=True)
    amount_usd = serializers.IntegerField()
    count = serializers.IntegerField()


class TrackOutputSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    gpu_model = serializers.CharField()
    gpu_memory_gb = serializers.IntegerField()
    gpu_price_usd = serializers.IntegerField()
    finetune_hours_limit = serializers.FloatField()
    max_upload_bytes = serializers.IntegerField()
    is_finalized = serializers.BooleanField()
    finalized_at = serializers.DateTimeField(allow_null=True)
    prizes = PrizeOutputSerializer(many=True, source="prizes.all")


class DateOutputSerializer(serializers.Serializer):
    label = serializers.CharField()
    at = serializers.DateTimeField()


class ChallengeOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()
    tagline = serializers.CharField()
    description = serializers.CharField()
    rules = serializers.CharField()
    timezone = serializers.CharField()
    timezone_label = serializers.CharField()
    starts_at = serializers.DateTimeField()
    submissions_open_at = serializers.DateTimeField()
    submission_deadline = serializers.DateTimeField()
    winners_notified_at = serializers.DateTimeField()
    presentation_at = serializers.DateTimeField()
    dates = serializers.SerializerMethodField()
    next_date = serializers.SerializerMethodField()
    accepts_submissions = serializers.SerializerMethodField()
    max_team_size = serializers.IntegerField()
    daily_submission_quota = serializers.IntegerField()
    scoring_mode = serializers.CharField()
    open_weight = serializers.FloatField()
    hidden_weight = serializers.FloatField()
    hidden_revealed = serializers.BooleanField()
    tracks = TrackOutputSerializer(many=True, source="track_list")

    @extend_schema_field(DateOutputSerializer(many=True))
    def get_dates(self, challenge) -> list[dict]:
        return [{"label": label, "at": at} for label, at in challenge.important_dates()]

    @extend_schema_field(DateOutputSerializer(allow_null=True))
    def get_next_date(self, challenge) -> dict | None:
        found = challenge.next_date()
        return DateOutputSerializer({"label": found[0], "at": found[1]}).data if found else None

    def get_accepts_submissions(self, challenge) -> bool:
        return challenge.accepts_submissions()


class ApiTokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class ApiTokenCreatedOutputSerializer(ApiTokenOutputSerializer):
    token = serializers.CharField(help_text="The secret. Shown only in this answer; store it now.")


class ApiTokenCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


# Views ----------------------------------------------------------------------------------------


class ChallengeApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=ChallengeOutputSerializer, summary="The challenge, its dates, tracks and prizes")
    def get(self, request: Request) -> Response:
        challenge = challenge_current_with_tracks()
        if challenge is None:
            raise NotFound("No challenge is running.")
        return Response(ChallengeOutputSerializer(challenge).data)


class TrackListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=TrackOutputSerializer(many=True), summary="The tracks and their prize tables")
    def get(self, request: Request) -> Response:
        challenge = challenge_current_with_tracks()
        tracks = challenge.track_list if challenge else []
        return Response(TrackOutputSerializer(tracks, many=True).data)


class TrackDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=TrackOutputSerializer, summary="One track")
    def get(self, request: Request, slug: str) -> Response:
        track = track_by_slug(slug)
        if track is None:
            raise NotFound(f"No track '{slug}'.")
        return Response(TrackOutputSerializer(track).data)


class ApiTokenListCreateApi(APIView):
    @extend_schema(responses=ApiTokenOutputSerializer(many=True), summary="My API tokens")
    def get(self, request: Request) -> Response:
        return Response(ApiTokenOutputSerializer(api_token_list(user=request.user), many=True).data)

    @extend_schema(
        request=ApiTokenCreateInputSerializer,
        responses={201: ApiTokenCreatedOutputSerializer},
        summary="Create an API token (browser session only)",
        description="Tokens cannot mint tokens: a leaked token must not outlive its revocation.",
    )
    def post(self, request: Request) -> Response:
        if request.auth is not None:
            raise PermissionDenied("Create tokens from your profile page or a browser session, not with a token.")
        data = _valid(ApiTokenCreateInputSerializer, request)
        token, secret = api_token_create(user=request.user, **data)
        token.token = secret
        return Response(ApiTokenCreatedOutputSerializer(token).data, status=status.HTTP_201_CREATED)


class ApiTokenRevokeApi(APIView):
    @extend_schema(request=None, responses={204: None}, summary="Revoke one of my API tokens")
    def delete(self, request: Request, token_id: int) -> Response:
        api_token_revoke(user=request.user, token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _valid(serializer_class, request: Request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
