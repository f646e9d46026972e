"""Input and output shapes of the submissions API."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from evaluation.models import BaseModel, Submission
from portal.models import Track


@extend_schema_field(OpenApiTypes.STR)
class TrackSlugField(serializers.SlugRelatedField):
    """A track of the active challenge, by slug."""

    default_error_messages = {"does_not_exist": "No track '{value}' in the running challenge.", "invalid": "Invalid."}

    def __init__(self, **kwargs):
        super().__init__(slug_field="slug", **kwargs)

    def get_queryset(self):
        return Track.objects.filter(challenge__is_active=True).select_related("challenge")


class SubmissionCreateInputSerializer(serializers.Serializer):
    track = TrackSlugField(help_text="Track slug, e.g. 4090.")
    base_model = serializers.SlugRelatedField(
        slug_field="name",
        queryset=BaseModel.objects.all(),
        help_text="Name on the allow-list, e.g. mistral-7b.",
        error_messages={"does_not_exist": "'{value}' is not on the allow-list of base models."},
    )
    datasets = serializers.CharField(help_text="Datasets used, with their licences, one per line.")
    finetune_gpu_hours = serializers.FloatField(min_value=0)
    recipe_url = serializers.URLField(max_length=500, help_text="Repository and commit of the training recipe.")
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class SubmissionListQuerySerializer(serializers.Serializer):
    track = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=Submission.Status.choices, required=False)
    team = serializers.CharField(required=False, help_text="Team slug (organizers).")


class TrackQuerySerializer(serializers.Serializer):
    track = serializers.CharField(required=False, help_text="Track slug; all tracks when left out.")


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class RequiredReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, help_text="The team reads it.")


class EventOutputSerializer(serializers.Serializer):
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class QueueOutputSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    estimated_start = serializers.DateTimeField(allow_null=True)


class ProgressOutputSerializer(serializers.Serializer):
    suite_role = serializers.CharField(allow_null=True)
    suites_done = serializers.ListField(child=serializers.CharField())
    runs_done = serializers.IntegerField(allow_null=True)
    runs_total = serializers.IntegerField(allow_null=True)
    instances_done = serializers.IntegerField(allow_null=True)
    instances_total = serializers.IntegerField(allow_null=True)
    percent = serializers.IntegerField(allow_null=True)
    current_run = serializers.CharField(allow_null=True, help_text="Never a hidden-suite run for participants.")
    elapsed_s = serializers.IntegerField(allow_null=True)
    eta_s = serializers.FloatField(allow_null=True)
    hidden_redacted = serializers.BooleanField()


class UploadTargetOutputSerializer(serializers.Serializer):
    creation_url = serializers.CharField(help_text="tus creation endpoint: POST with Upload-Length and the metadata.")
    metadata = serializers.DictField(child=serializers.CharField(), help_text="Send as tus Upload-Metadata.")
    url = serializers.CharField(allow_null=True, help_text="An unfinished upload to resume (HEAD, then PATCH).")
    offset = serializers.IntegerField(allow_null=True)
    length = serializers.IntegerField(allow_null=True)


class AspectsOutputSerializer(serializers.Serializer):
    accuracy = serializers.FloatField(allow_null=True)
    robustness = serializers.FloatField(allow_null=True)
    fairness = serializers.FloatField(allow_null=True)
    bias = serializers.FloatField(allow_null=True)
    efficiency = serializers.FloatField(allow_null=True)


class ScoresOutputSerializer(serializers.Serializer):
    final = serializers.FloatField(allow_null=True, help_text="Open and hidden combined: null until revealed.")
    open_score = serializers.FloatField(allow_null=True)
    hidden_score = serializers.FloatField(allow_null=True, help_text="Null until revealed (organizers: always).")
    open = AspectsOutputSerializer(help_text="The five aspect scores on the open suite.")
    hidden = AspectsOutputSerializer(
        allow_null=True, help_text="Null until revealed, except for the submission's own team and organizers."
    )
    rank = serializers.IntegerField(
        allow_null=True,
        help_text="The rank the board shows: the final rank once revealed (for a non-entry, the rank it would take "
        "as its team's entry), before that the open-suite rank of a team entry.",
    )
    is_team_entry = serializers.BooleanField()
    hidden_visible = serializers.BooleanField()
    provisional = serializers.BooleanField(help_text="True until an organizer finalizes the track.")


class SubmissionOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    team = serializers.CharField(source="team.slug")
    track = serializers.CharField(source="track.slug")
    status = serializers.ChoiceField(choices=Submission.Status.choices)
    status_reason = serializers.CharField()
    failure_kind = serializers.CharField()
    created_at = serializers.DateTimeField()
    status_changed_at = serializers.DateTimeField()
    kind = serializers.CharField()
    base_model = serializers.CharField(source="base_model.name")
    datasets = serializers.CharField()
    finetune_gpu_hours = serializers.FloatField()
    recipe_url = serializers.CharField()
    notes = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    sha256 = serializers.CharField()
    parameter_count = serializers.IntegerField(allow_null=True)
    estimated_memory_gb = serializers.FloatField(allow_null=True)
    is_final = serializers.BooleanField()
    priority = serializers.IntegerField()
    scores = serializers.SerializerMethodField()

    @extend_schema_field(ScoresOutputSerializer(allow_null=True))
    def get_scores(self, submission) -> dict | None:
        scores = getattr(submission, "scores", None)
        return ScoresOutputSerializer(scores).data if scores else None


class SubmissionDetailOutputSerializer(SubmissionOutputSerializer):
    history = EventOutputSerializer(many=True)
    queue = QueueOutputSerializer(allow_null=True)
    progress = ProgressOutputSerializer(allow_null=True)
    log_tail = serializers.CharField(help_text="Last lines of the evaluation log (hidden-suite lines never shown).")
    upload = UploadTargetOutputSerializer(allow_null=True)


class QuotaOutputSerializer(serializers.Serializer):
    track = serializers.CharField()
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    remaining = serializers.IntegerField()
    resets_at = serializers.DateTimeField()
    final_entry = serializers.IntegerField(allow_null=True)


class PriorityInputSerializer(serializers.Serializer):
    priority = serializers.IntegerField(min_value=-100, max_value=100)
    reason = serializers.CharField(required=False, allow_blank=True, default="")
