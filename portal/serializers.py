"""Input and output shapes of the portal's API. Private fields appear only where `show_private` is set."""

from django_countries.data import COUNTRIES
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.models import Invitation, Profile
from portal.permissions import public_name

# Challenge and tracks ------------------------------------------------------------------------


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


# API tokens ----------------------------------------------------------------------------------


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


# Profiles ------------------------------------------------------------------------------------


class ProfileOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    display_name = serializers.CharField()
    name = serializers.CharField()
    affiliation = serializers.CharField()
    country = serializers.CharField()
    student_status = serializers.ChoiceField(choices=Profile.StudentStatus.choices)
    student_rejection_reason = serializers.CharField()
    student_evidence_uploaded_at = serializers.DateTimeField(allow_null=True)
    has_student_evidence = serializers.SerializerMethodField()

    def get_has_student_evidence(self, profile) -> bool:
        return bool(profile.student_evidence)


class TeamRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    is_captain = serializers.BooleanField()


class MeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    is_organizer = serializers.BooleanField()
    profile = ProfileOutputSerializer()
    team = TeamRefSerializer(allow_null=True)


class ProfileUpdateInputSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=100, allow_blank=True, required=False)
    affiliation = serializers.CharField(max_length=200, allow_blank=True, required=False)
    country = serializers.ChoiceField(choices=[("", "—"), *COUNTRIES.items()], allow_blank=True, required=False)
    is_student = serializers.BooleanField(required=False)


class EvidenceUploadInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="Evidence of enrolment: PDF, PNG or JPEG.")


class ProfileReviewOutputSerializer(ProfileOutputSerializer):
    """What organizers see when reviewing student status."""

    user_id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    student_reviewed_at = serializers.DateTimeField(allow_null=True)


class StudentReviewInputSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=[("verify", "verify"), ("reject", "reject")])
    reason = serializers.CharField(allow_blank=True, required=False, default="")


class ProfileReviewQuerySerializer(serializers.Serializer):
    student_status = serializers.ChoiceField(choices=Profile.StudentStatus.choices, required=False)


# Teams ---------------------------------------------------------------------------------------


class PublicNameField(serializers.CharField):
    """A profile's public name (see portal.permissions.public_name), from the given user or profile path."""

    def to_representation(self, value) -> str:
        return public_name(getattr(value, "profile", value))


class MemberOutputSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    name = PublicNameField(source="user")
    affiliation = serializers.CharField(source="user.profile.affiliation")
    is_captain = serializers.SerializerMethodField()
    joined_at = serializers.DateTimeField()

    def get_is_captain(self, membership) -> bool:
        return membership.team.captain_id == membership.user_id


class PrivateMemberOutputSerializer(MemberOutputSerializer):
    email = serializers.EmailField(source="user.email")
    student_status = serializers.CharField(source="user.profile.student_status")


class EligibilityOutputSerializer(serializers.Serializer):
    eligible = serializers.BooleanField()
    verified = serializers.IntegerField()
    total = serializers.IntegerField()
    summary = serializers.CharField()
    missing_members = serializers.SerializerMethodField()

    def get_missing_members(self, eligibility) -> list[str]:
        return [public_name(profile) for profile in eligibility.missing_members]


class InvitationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField(allow_blank=True)
    is_link = serializers.BooleanField()
    status = serializers.ChoiceField(choices=Invitation.Status.choices)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    invited_by = PublicNameField()


class InvitationCreatedOutputSerializer(InvitationOutputSerializer):
    token = serializers.CharField(help_text="Shown once: accept with POST /api/v1/invitations/{token}/accept/.")
    link = serializers.CharField(help_text="The page a teammate opens to join (shown once).")


class InvitationCreateInputSerializer(serializers.Serializer):
    email = serializers.EmailField(required=False, allow_blank=True, help_text="Leave out for a shareable link.")


class InvitationPreviewOutputSerializer(serializers.Serializer):
    team = serializers.CharField(source="team.name")
    team_slug = serializers.CharField(source="team.slug")
    invited_by = PublicNameField()
    status = serializers.ChoiceField(choices=Invitation.Status.choices)
    expires_at = serializers.DateTimeField()
    is_link = serializers.BooleanField()


class MyInvitationOutputSerializer(InvitationPreviewOutputSerializer):
    id = serializers.IntegerField()


class TeamOutputSerializer(serializers.Serializer):
    """Public fields; `members` without contacts."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    created_at = serializers.DateTimeField()
    captain_id = serializers.IntegerField()
    student_eligible = serializers.BooleanField()
    members = MemberOutputSerializer(many=True, source="memberships.all")


class PrivateTeamOutputSerializer(TeamOutputSerializer):
    """What members and organizers see."""

    members = PrivateMemberOutputSerializer(many=True, source="memberships.all")
    eligibility = EligibilityOutputSerializer()
    pending_invitations = InvitationOutputSerializer(many=True)


class TeamCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=80)


class MemberRemoveInputSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class CaptainTransferInputSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
