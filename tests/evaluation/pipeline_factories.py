"""Factories and helpers for the evaluation pipeline's tests."""

from __future__ import annotations

import factory

from evaluation.models import BaseModel, Submission
from evaluation.services.transitions import submission_transition
from tests.factories import TeamFactory, TrackFactory

S = Submission.Status


class PipelineBaseModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BaseModel
        django_get_or_create = ("name",)

    name = "tiny-llama"
    architecture = "LlamaForCausalLM"
    parameter_count = 150_000
    licence = "apache-2.0"


class PipelineSubmissionFactory(factory.django.DjangoModelFactory):
    """A submission that passed validation; `queued()` moves it through the real transitions."""

    class Meta:
        model = Submission

    track = factory.SubFactory(TrackFactory)
    team = factory.SubFactory(TeamFactory, challenge=factory.SelfAttribute("..track.challenge"))
    created_by = factory.SelfAttribute("team.captain")
    base_model = factory.SubFactory(PipelineBaseModelFactory)
    datasets = "offline arithmetic train split (CC-BY-4.0)"
    finetune_gpu_hours = 1.0
    recipe_url = "https://example.org/recipe/commit/abc"
    model_dir = "/nonexistent-model"
    sha256 = "0" * 64


def queued(submission: Submission, reason: str = "Validated.") -> Submission:
    submission_transition(submission_id=submission.pk, to=S.VALIDATING, reason="Upload complete.")
    return submission_transition(submission_id=submission.pk, to=S.QUEUED, reason=reason)
