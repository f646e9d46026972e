"""Output shapes of the leaderboard API."""

from rest_framework import serializers

from evaluation.serializers import AspectsOutputSerializer, ScoresOutputSerializer
from leaderboard.selectors_api import PARETO_X


class LeaderboardQuerySerializer(serializers.Serializer):
    ordering = serializers.CharField(
        required=False, help_text="A column, '-' first for descending, e.g. -open_accuracy or eval_gpu_seconds."
    )
    student_eligible = serializers.BooleanField(required=False, allow_null=True, default=None)
    base_model = serializers.CharField(required=False)


class TeamMiniSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()


class LeaderboardRowSerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="1-based place in this listing's order.")
    rank = serializers.IntegerField(
        allow_null=True, help_text="The final rank: null until hidden results are revealed."
    )
    team = TeamMiniSerializer()
    submission_id = serializers.IntegerField()
    student_eligible = serializers.BooleanField()
    final_score = serializers.FloatField(allow_null=True)
    open_score = serializers.FloatField(allow_null=True)
    hidden_score = serializers.FloatField(allow_null=True)
    open = AspectsOutputSerializer()
    hidden = AspectsOutputSerializer(allow_null=True)
    finetune_gpu_hours = serializers.FloatField(allow_null=True)
    eval_gpu_seconds = serializers.FloatField(allow_null=True)
    peak_gpu_memory_bytes = serializers.IntegerField(allow_null=True)
    parameter_count = serializers.IntegerField(allow_null=True)
    output_tokens_per_second = serializers.FloatField(allow_null=True)
    base_model = serializers.CharField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    reproduction = serializers.CharField(allow_blank=True)
    disqualified = serializers.BooleanField(help_text="Organizers only ever see these rows.")
    disqualification_reason = serializers.CharField(allow_blank=True)


class LeaderboardPageSerializer(serializers.Serializer):
    track = serializers.CharField()
    provisional = serializers.BooleanField()
    hidden_visible = serializers.BooleanField()
    computed_at = serializers.DateTimeField(allow_null=True)
    ranking_rule = serializers.CharField()
    sortable = serializers.ListField(child=serializers.CharField())
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = LeaderboardRowSerializer(many=True)


class ParetoQuerySerializer(serializers.Serializer):
    x = serializers.ChoiceField(choices=[(c, c) for c in PARETO_X], required=False, default="eval_gpu_seconds")
    y = serializers.CharField(required=False, default="", help_text="final_score once revealed, else open_score.")


class ParetoPointSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    team = serializers.CharField()
    x = serializers.FloatField(allow_null=True)
    y = serializers.FloatField(allow_null=True)
    on_frontier = serializers.BooleanField()


class ParetoSerializer(serializers.Serializer):
    track = serializers.CharField()
    x = serializers.CharField()
    y = serializers.CharField()
    x_choices = serializers.ListField(child=serializers.CharField())
    y_choices = serializers.ListField(child=serializers.CharField())
    points = ParetoPointSerializer(many=True)
    frontier = serializers.ListField(child=serializers.IntegerField(), help_text="Submission ids by increasing x.")


class AwardSerializer(serializers.Serializer):
    kind = serializers.CharField()
    place = serializers.IntegerField(allow_null=True, required=False)
    amount_usd = serializers.IntegerField()
    submission_id = serializers.IntegerField()
    team = serializers.CharField()
    rank = serializers.IntegerField()
    reproduction = serializers.CharField(allow_null=True)
    confirmed = serializers.BooleanField()


class AwardsSerializer(serializers.Serializer):
    track = serializers.CharField()
    visible = serializers.BooleanField(help_text="False until hidden results are revealed (organizers: always).")
    finalized = serializers.BooleanField()
    provisional = serializers.BooleanField()
    awards = AwardSerializer(many=True)
    vacant = serializers.ListField(child=serializers.DictField())


class AnalysisSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    track = serializers.CharField()
    team = serializers.CharField()
    scores = ScoresOutputSerializer()
    track_median = serializers.DictField(child=serializers.FloatField(allow_null=True))
    breakdown = serializers.DictField(help_text="Per suite and scenario; hidden-suite scenarios for organizers only.")
    compute = serializers.DictField()
    on_frontier = serializers.BooleanField(help_text="On the track's frontier of eval GPU-seconds vs. score.")


class FinalizeOutputSerializer(serializers.Serializer):
    track = serializers.CharField()
    finalized_at = serializers.DateTimeField()
    awards = AwardSerializer(many=True)


class ReproductionInputSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=[("pending", "pending"), ("verified", "verified"), ("failed", "failed")])
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class ReproductionOutputSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    status = serializers.CharField()
    notes = serializers.CharField()
    recorded_at = serializers.DateTimeField()


class RevealOutputSerializer(serializers.Serializer):
    challenge = serializers.CharField(help_text="The challenge's slug.")
    hidden_revealed_at = serializers.DateTimeField()
