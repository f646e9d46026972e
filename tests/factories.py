"""factory_boy factories for the core models. Apps add their own beside their tests."""

from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

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
