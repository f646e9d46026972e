"""A small, fully populated challenge for permission tests: two teams, an organizer, sentinel secrets.

Every private value is a distinctive sentinel string, so a test can search any answer for it.
"""

from dataclasses import dataclass, field

from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

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
        values = {
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
    challenge = ChallengeFactory(max_team_size=5)
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
    return world


__all__ = ["ROLES", "World", "build_world", "TeamFactory"]
