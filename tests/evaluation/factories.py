import factory

from evaluation.models import BaseModel, Submission
from tests.factories import TeamFactory, TrackFactory, UserFactory


class BaseModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BaseModel
        django_get_or_create = ("name",)

    name = "tiny-llama"
    display_name = "Tiny Llama (tests)"
    architecture = "LlamaForCausalLM"
    parameter_count = 144_960
    licence = "apache-2.0"


class SubmissionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Submission

    team = factory.SubFactory(TeamFactory)
    track = factory.LazyAttribute(lambda s: TrackFactory(challenge=s.team.challenge))
    created_by = factory.LazyAttribute(lambda s: s.team.captain)
    base_model = factory.SubFactory(BaseModelFactory)
    datasets = "databricks-dolly-15k (CC BY-SA 3.0)"
    finetune_gpu_hours = 10.0
    recipe_url = "https://example.org/recipe/commit/abc123"


__all__ = ["BaseModelFactory", "SubmissionFactory", "UserFactory"]
