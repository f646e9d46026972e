"""Text PostgreSQL cannot hold is a 400 with its reason, never a 500 (found by schemathesis in CI)."""

import pytest
from rest_framework.test import APIClient

from tests.factories import MembershipFactory, TrackFactory

pytestmark = pytest.mark.django_db


def test_a_nul_character_in_a_looked_up_field_is_a_400_not_a_500():
    track = TrackFactory()
    member = MembershipFactory(team__challenge=track.challenge).user
    client = APIClient()
    client.force_authenticate(member)
    response = client.post(
        "/api/v1/submissions/",
        {
            "track": "40\x0090",
            "base_model": "x",
            "datasets": "d",
            "finetune_gpu_hours": 1,
            "recipe_url": "https://x.org",
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"track": ["Text may not contain NUL characters."]}


@pytest.mark.parametrize("url", ["/leaderboard/4090/?base=a%00b", "/api/v1/leaderboards/4090/standings/?base=%00"])
def test_a_nul_character_in_the_query_string_is_a_400(client, url):
    TrackFactory(slug="4090")
    response = client.get(url)
    assert response.status_code == 400
    assert b"NUL" in response.content
