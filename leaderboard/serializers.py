"""Output shapes of the leaderboard API."""

from rest_framework import serializers

from evaluation.serializers import AspectsOutputSerializer, ScoresOutputSerializer
from leaderboard.selectors.board import MAX_PER_PAGE, PER_PAGE


class LeaderboardQuerySerializer(serializers.Serializer):
    ordering = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="A column of `sortable`, '-' first for descending, e.g. -accuracy, eval_gpu_seconds, date. "
        "`rank` and `score` are the final ones once revealed, the open-suite ones before. Default: rank.",
    )
    suite = serializers.ChoiceField(
        choices=[("open", "open"), ("hidden", "hidden")],
        default="open",
        help_text="Which suite's aspect scores `aspects` holds and the aspect columns sort by (hidden: once revealed).",
    )
    student_only = serializers.BooleanField(required=False, default=False, help_text="Student-eligible teams only.")
    base_model = serializers.CharField(required=False, allow_blank=True, max_length=200)
    page = serializers.IntegerField(required=False, default=1, min_value=1)
    page_size = serializers.IntegerField(required=False, default=PER_PAGE, min_value=1, max_value=MAX_PER_PAGE)


class TeamMiniSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()


class LeaderboardRowSerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="1-based place in this listing's order.")
    rank = serializers.IntegerField(
        allow_null=True, help_text="The final rank once revealed, the open-suite rank before (as on the page)."
    )
    score = serializers.FloatField(allow_null=True, help_text="The final score once revealed, the open score before.")
    team = TeamMiniSerializer()
    team_url = serializers.CharField(allow_null=True)
    is_own_team = serializers.BooleanField()
    submission_id = serializers.IntegerField()
    student_eligible = serializers.BooleanField()
    final_score = serializers.FloatField(allow_null=True, default=None, help_text="Null until revealed.")
    open_score = serializers.FloatField(allow_null=True)
    hidden_score = serializers.FloatField(allow_null=True, default=None, help_text="Null until revealed.")
    aspects = AspectsOutputSerializer(help_text="The aspect scores of the suite asked for.")
    open = AspectsOutputSerializer()
    hidden = AspectsOutputSerializer(allow_null=True, help_text="Null until revealed.")
    finetune_gpu_hours = serializers.FloatField(allow_null=True)
    eval_gpu_seconds = serializers.FloatField(allow_null=True)
    peak_gpu_memory_bytes = serializers.IntegerField(allow_null=True)
    parameter_count = serializers.IntegerField(allow_null=True)
    output_tokens_per_second = serializers.FloatField(allow_null=True)
    base_model = serializers.CharField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    analysis_url = serializers.CharField()


class DisqualifiedSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    team = serializers.CharField()
    team_id = serializers.IntegerField()
    base_model = serializers.CharField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    last_final_score = serializers.FloatField(allow_null=True)


class LeaderboardPageSerializer(serializers.Serializer):
    track = serializers.CharField()
    provisional = serializers.BooleanField()
    hidden_visible = serializers.BooleanField()
    computed_at = serializers.DateTimeField(allow_null=True)
    ranking_rule = serializers.CharField()
    sort = serializers.CharField()
    suite = serializers.CharField()
    sortable = serializers.ListField(child=serializers.CharField())
    base_models = serializers.ListField(child=serializers.CharField(), help_text="Values for `base_model`.")
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    pages = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = LeaderboardRowSerializer(many=True)
    disqualified = DisqualifiedSerializer(many=True, help_text="Organizers only; empty for everyone else.")


class ParetoQuerySerializer(serializers.Serializer):
    x = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="A key of `x_choices`; default eval_gpu_seconds."
    )
    y = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="A key of `y_choices`; default final_score once revealed, else open_score.",
    )


class ParetoPointSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    team = serializers.CharField()
    x = serializers.FloatField(allow_null=True)
    y = serializers.FloatField(allow_null=True)
    rank = serializers.IntegerField(allow_null=True)
    base_model = serializers.CharField()
    on_frontier = serializers.BooleanField()
    url = serializers.CharField(help_text="The submission's analysis page.")


class ParetoSerializer(serializers.Serializer):
    track = serializers.CharField()
    x = serializers.CharField()
    y = serializers.CharField()
    x_label = serializers.CharField()
    y_label = serializers.CharField()
    x_choices = serializers.ListField(child=serializers.CharField())
    y_choices = serializers.ListField(child=serializers.CharField())
    points = ParetoPointSerializer(many=True)
    frontier = serializers.ListField(child=serializers.IntegerField(), help_text="Submission ids by increasing x.")


class AwardSerializer(serializers.Serializer):
    kind = serializers.CharField()
    place = serializers.IntegerField(allow_null=True, required=False)
    amount_usd = serializers.IntegerField()
    submission_id = serializers.IntegerField()
    team_id = serializers.IntegerField()
    team = serializers.CharField()
    rank = serializers.IntegerField()
    reproduction = serializers.CharField(allow_null=True)
    confirmed = serializers.BooleanField()


class ExcludedTeamSerializer(serializers.Serializer):
    team_id = serializers.IntegerField()
    team = serializers.CharField()


class AwardsSerializer(serializers.Serializer):
    track = serializers.CharField()
    visible = serializers.BooleanField(help_text="False until hidden results are revealed (organizers: always).")
    finalized = serializers.BooleanField()
    provisional = serializers.BooleanField(help_text="True until an organizer finalizes the track.")
    unconfirmed = serializers.BooleanField(default=False, help_text="A place still awaits its reproduction.")
    awards = AwardSerializer(many=True)
    vacant = serializers.ListField(child=serializers.DictField())
    excluded = ExcludedTeamSerializer(many=True, help_text="Teams whose reproduction failed.")


class ComparisonSerializer(serializers.Serializer):
    suite = serializers.CharField()
    aspect = serializers.CharField()
    label = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    median = serializers.FloatField(allow_null=True, help_text="Over the track's ranked team entries.")
    best = serializers.FloatField(allow_null=True)
    frontier = serializers.FloatField(
        allow_null=True, help_text="The best value reached with no more evaluation GPU-seconds."
    )


class ScenarioRowSerializer(serializers.Serializer):
    scenario = serializers.CharField(help_text="Hidden-suite scenarios are 'Hidden task N' except for organizers.")
    scores = serializers.DictField(child=serializers.FloatField(allow_null=True))
    values = serializers.DictField(child=serializers.FloatField(allow_null=True))
    accuracy_value = serializers.FloatField(allow_null=True)
    robustness_value = serializers.FloatField(allow_null=True)
    fairness_value = serializers.FloatField(allow_null=True)
    robustness_drop = serializers.FloatField(allow_null=True)
    fairness_drop = serializers.FloatField(allow_null=True)


class AnalysisSerializer(serializers.Serializer):
    submission_id = serializers.IntegerField()
    track = serializers.CharField()
    team = serializers.CharField()
    disqualified = serializers.BooleanField(help_text="Shown to its team and organizers only.")
    disqualification_reason = serializers.CharField(allow_blank=True)
    hidden_visible = serializers.BooleanField()
    scores = ScoresOutputSerializer(allow_null=True)
    comparison = ComparisonSerializer(many=True)
    entries = serializers.IntegerField(help_text="Ranked team entries compared with.")
    scenarios = serializers.DictField(child=ScenarioRowSerializer(many=True), help_text="Per suite.")
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
