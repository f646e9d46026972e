"""factory_boy factories for every app's tests: one definition of each model's test data."""

from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from evaluation.models import BaseModel, Submission
from evaluation.services.transitions import submission_transition
from portal.models import Challenge, Membership, Profile, Team, Track


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")


class ProfileFactory(factory.django.DjangoModelFactory):
    """Every user already has a profile (a signal creates it): this fills it in."""

    class Meta:
        model = Profile

    user = factory.SubFactory(UserFactory)
    display_name = factory.Faker("name")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        user = kwargs.pop("user")
        profile, _ = model_class.objects.update_or_create(user=user, defaults=kwargs)
        return profile


class ChallengeFactory(factory.django.DjangoModelFactory):
    """A challenge whose submission window is open now."""

    class Meta:
        model = Challenge
        django_get_or_create = ("slug",)

    name = "LLM Efficiency Challenge"
    slug = factory.Sequence(lambda n: f"challenge-{n}")
    starts_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=30))
    submissions_open_at = factory.LazyFunction(lambda: timezone.now() - timedelta(days=1))
    submission_deadline = factory.LazyFunction(lambda: timezone.now() + timedelta(days=30))
    winners_notified_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=60))
    presentation_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=90))


class TrackFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Track

    challenge = factory.SubFactory(ChallengeFactory)
    slug = factory.Sequence(lambda n: f"t{n}")
    name = factory.LazyAttribute(lambda t: f"Track {t.slug}")
    gpu_model = "NVIDIA RTX 4090"
    gpu_memory_gb = 24
    gpu_price_usd = 2000


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    challenge = factory.SubFactory(ChallengeFactory)
    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")
    captain = factory.SubFactory(UserFactory)

    @factory.post_generation
    def with_captain_membership(obj, create, extracted, **kwargs):
        if create:
            Membership.objects.get_or_create(team=obj, user=obj.captain, challenge=obj.challenge)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    challenge = factory.LazyAttribute(lambda m: m.team.challenge)


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
    """A submission as created (uploading). Without a team, one is made in the track's challenge."""

    class Meta:
        model = Submission

    track = factory.SubFactory(TrackFactory)
    team = factory.SubFactory(TeamFactory, challenge=factory.SelfAttribute("..track.challenge"))
    created_by = factory.SelfAttribute("team.captain")
    base_model = factory.SubFactory(BaseModelFactory)
    datasets = "databricks-dolly-15k (CC BY-SA 3.0)"
    finetune_gpu_hours = 10.0
    recipe_url = "https://example.org/recipe/commit/abc123"


class ValidatedSubmissionFactory(SubmissionFactory):
    """A submission whose archive passed validation; `queued()` moves it through the real transitions."""

    datasets = "offline arithmetic train split (CC-BY-4.0)"
    finetune_gpu_hours = 1.0
    model_dir = "/nonexistent-model"
    sha256 = "0" * 64


class ScoredSubmissionFactory(SubmissionFactory):
    """A submission created directly in the scored state (a fixture, not a status change)."""

    base_model = factory.SubFactory(
        BaseModelFactory,
        name="tiny-gpt2",
        display_name="",
        architecture="GPT2LMHeadModel",
        parameter_count=1_000_000,
        licence="MIT",
    )
    datasets = "dolly (CC BY-SA 3.0)"
    finetune_gpu_hours = 2.5
    recipe_url = "https://example.org/recipe"
    status = Submission.Status.SCORED
    parameter_count = 1_000_000


def queued(submission: Submission, reason: str = "Validated.") -> Submission:
    submission_transition(submission_id=submission.pk, to=Submission.Status.VALIDATING, reason="Upload complete.")
    return submission_transition(submission_id=submission.pk, to=Submission.Status.QUEUED, reason=reason)
