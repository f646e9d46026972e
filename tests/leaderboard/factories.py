"""Factories for the leaderboard tests (evaluation's own factories may replace these when merged)."""

import factory

from evaluation.models import BaseModel, Submission
from tests.factories import TeamFactory, TrackFactory, UserFactory


class BaseModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BaseModel
        django_get_or_create = ("name",)

    name = "tiny-gpt2"
    architecture = "GPT2LMHeadModel"
    parameter_count = 1_000_000
    licence = "MIT"


class ScoredSubmissionFactory(factory.django.DjangoModelFactory):
    """A submission created directly in the scored state (a fixture, not a status change)."""

    class Meta:
        model = Submission

    track = factory.SubFactory(TrackFactory)
    team = factory.SubFactory(TeamFactory, challenge=factory.SelfAttribute("..track.challenge"))
    created_by = factory.SubFactory(UserFactory)
    base_model = factory.SubFactory(BaseModelFactory)
    datasets = "dolly (CC BY-SA 3.0)"
    finetune_gpu_hours = 2.5
    recipe_url = "https://example.org/recipe"
    status = Submission.Status.SCORED
    parameter_count = 1_000_000
