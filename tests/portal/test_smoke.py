import pytest
from django.urls import reverse


@pytest.mark.django_db
def test_home_renders_without_a_challenge(client):
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert b"No challenge yet" in response.content
