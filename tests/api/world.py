"""A small, fully populated challenge for permission tests: two teams, an organizer, sentinel secrets.

Every private value is a distinctive sentinel string, so a test can search any answer for it.
"""

import base64
from dataclasses import dataclass, field

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from evaluation.models import BaseModel, EvaluationJob, Submission
from evaluation.services.transitions import submission_transition
from evaluation.services.uploads import upload_create
from leaderboard.models import Standing, StandingsSnapshot
from portal import services
from portal.api.services import api_token_create
from portal.models import Challenge, Invitation, Team, Track
from tests.factories import ChallengeFactory, TeamFactory, TrackFactory, UserFactory

ROLES = ("anonymous", "outsider", "member", "captain", "organizer")

# Sentinel → the roles allowed to see it anywhere in any answer.
MEMBER_EMAIL = "member.sentinel@team-a.example"
CAPTAIN_EMAIL = "captain.sentinel@team-a.example"
INVITEE_EMAIL = "invitee.sentinel@elsewhere.example"
EVIDENCE_BYTES = b"%PDF-1.4 evidence-sentinel-7f3a"
OUTSIDER_EMAIL = "outsider.sentinel@team-b.example"
TEAM_A_NOTES = "team-a-notes-sentinel"
TEAM_A_RECIPE = "https://example.org/team-a-recipe-sentinel"
TEAM_B_NOTES = "team-b-notes-sentinel"
HIDDEN_SCENARIO = "hidden-scenario-sentinel-ethics"
HIDDEN_RUN = "hidden-run-sentinel:model=x"
HIDDEN_LOG = "hidden-log-line-sentinel"
HIDDEN_SCORE = 0.123456789
FINAL_SCORE = 0.987654321


@dataclass
class World:
    challenge: Challenge
    track: Track
    team: Team
    other_team: Team
    users: dict
    tokens: dict = field(default_factory=dict)
    invitation: Invitation | None = None
    invitation_token: str = ""
    extra: dict = field(default_factory=dict)

    def client(self, role: str) -> APIClient:
        client = APIClient()
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.tokens[role]}")
        return client

    @property
    def sentinels(self) -> dict[str, set[str]]:
        team_a = {"member", "captain", "organizer"}
        values = {
            TEAM_A_NOTES: team_a,
            TEAM_A_RECIPE: team_a,
            TEAM_B_NOTES: {"outsider", "organizer"},
            HIDDEN_SCENARIO: {"organizer"},
            HIDDEN_RUN: {"organizer"},
            HIDDEN_LOG: {"organizer"},
            str(HIDDEN_SCORE): {"organizer"},
            str(FINAL_SCORE): {"organizer"},
            MEMBER_EMAIL: {"member", "captain", "organizer"},
            CAPTAIN_EMAIL: {"member", "captain", "organizer"},
            INVITEE_EMAIL: {"captain", "organizer"},
            EVIDENCE_BYTES.decode(): {"member", "organizer"},
            OUTSIDER_EMAIL: {"outsider", "organizer"},
            self.invitation_token: set(),
        }
        for secret in self.extra.get("sentinels", {}):
            values[secret] = self.extra["sentinels"][secret]
        for user in self.users.values():
            for token in user.api_tokens.all():
                values[token.token_hash] = set()
        return values


def build_world() -> World:
    challenge = ChallengeFactory(max_team_size=5, daily_submission_quota=10)
    track = TrackFactory(challenge=challenge, slug="4090", name="RTX 4090")
    track.prizes.create(kind="place", place=1, amount_usd=5000)
    captain = UserFactory(username="captain", email=CAPTAIN_EMAIL)
    member = UserFactory(username="member", email=MEMBER_EMAIL)
    outsider = UserFactory(username="outsider", email=OUTSIDER_EMAIL)
    organizer = UserFactory(username="organizer", email="organizer@portal.example", is_staff=True)
    team = services.team_create(user=captain, challenge=challenge, name="Team Alpha")
    from portal.models import Membership

    Membership.objects.create(team=team, user=member, challenge=challenge)
    other_team = services.team_create(user=outsider, challenge=challenge, name="Team Beta")
    services.profile_update(
        user=member,
        display_name="Mia Member",
        affiliation="Uni A",
        country="DE",
        is_student=True,
        evidence=SimpleUploadedFile("card.pdf", EVIDENCE_BYTES, content_type="application/pdf"),
    )
    invitation, invitation_token = services.invitation_create(actor=captain, team=team, email=INVITEE_EMAIL)
    world = World(
        challenge=challenge,
        track=track,
        team=team,
        other_team=other_team,
        users={"outsider": outsider, "member": member, "captain": captain, "organizer": organizer},
        invitation=invitation,
        invitation_token=invitation_token,
    )
    for role, user in world.users.items():
        world.tokens[role] = api_token_create(user=user, name=f"{role} token")[1]
    _add_submissions(world)
    return world


def _submission(world: World, team: Team, *, notes: str, recipe: str, to: list[str]) -> Submission:
    base, _ = BaseModel.objects.get_or_create(
        name="tiny-llama", defaults={"architecture": "LlamaForCausalLM", "parameter_count": 150_000, "licence": "mit"}
    )
    submission = Submission.objects.create(
        team=team,
        track=world.track,
        created_by=team.captain,
        base_model=base,
        datasets="offline arithmetic (CC-BY-4.0)",
        finetune_gpu_hours=2.0,
        recipe_url=recipe,
        notes=notes,
        model_dir="/nonexistent-model",
        sha256="a" * 64,
    )
    for status in to:
        submission_transition(submission_id=submission.pk, to=status, reason=f"test: {status}")
    return Submission.objects.get(pk=submission.pk)


def _add_submissions(world: World) -> None:
    """Team A: a scored entry and one running on the hidden suite; team B: a scored entry; stored standings."""
    S = Submission.Status
    path = [S.VALIDATING, S.QUEUED, S.RUNNING]
    scored_a = _submission(world, world.team, notes=TEAM_A_NOTES, recipe=TEAM_A_RECIPE, to=[*path, S.SCORED])
    running_a = _submission(world, world.team, notes=TEAM_A_NOTES, recipe=TEAM_A_RECIPE, to=path)
    EvaluationJob.objects.create(
        submission=running_a,
        state=EvaluationJob.State.RUNNING,
        started_at=timezone.now(),
        progress={"suite_role": "hidden", "runs_done": 3, "runs_total": 9, "current_run": HIDDEN_RUN},
        log_tail=f"running {HIDDEN_RUN}\n{HIDDEN_LOG}",
    )
    scored_b = _submission(
        world, world.other_team, notes=TEAM_B_NOTES, recipe="https://example.org/b", to=[*path, S.SCORED]
    )
    snapshot = StandingsSnapshot.objects.create(
        track=world.track, scoring_mode="win_rate", suite_weights={"open": 1 / 3, "hidden": 2 / 3}, entry_count=2
    )
    breakdown = {
        "open": {"weight": 1 / 3, "scenarios": {"arithmetic": {"scores": {"accuracy": 0.5}, "values": {}}}},
        "hidden": {"weight": 2 / 3, "scenarios": {HIDDEN_SCENARIO: {"scores": {"accuracy": 0.4}, "values": {}}}},
    }
    for rank, (submission, final) in enumerate([(scored_a, FINAL_SCORE), (scored_b, 0.25)], start=1):
        Standing.objects.create(
            snapshot=snapshot,
            submission=submission,
            team=submission.team,
            is_team_entry=True,
            rank=rank,
            open_rank=rank,
            final_score=final,
            open_score=0.6 - rank / 10,
            hidden_score=HIDDEN_SCORE if rank == 1 else 0.2,
            open_accuracy=0.5,
            hidden_accuracy=0.4,
            breakdown=breakdown,
            base_model_name="tiny-llama",
            submitted_at=submission.created_at,
            eval_gpu_seconds=100.0 * rank,
        )
    uploading_a = _submission(world, world.team, notes=TEAM_A_NOTES, recipe=TEAM_A_RECIPE, to=[])
    upload = upload_create(user=world.team.captain, length=10, metadata={"submission": str(uploading_a.pk)})
    world.extra["path_values"] = {
        "uploading_a": uploading_a.pk,
        "uploading_a_b64": base64.b64encode(str(uploading_a.pk).encode()).decode(),
        "upload_a": str(upload.pk),
        "scored_a": scored_a.pk,
        "running_a": running_a.pk,
        "scored_b": scored_b.pk,
    }


__all__ = ["ROLES", "World", "build_world", "TeamFactory"]
