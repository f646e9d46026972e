"""The API tokens section of the profile page: created with the secret shown once, revoked, never leaked."""

import pytest
from django.contrib.staticfiles import finders
from django.template import RequestContext, Template
from django.test import RequestFactory

from portal.api.models import ApiToken
from portal.api.services import api_token_create
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_create_shows_the_secret_once_and_stores_only_its_hash(client, user):
    client.force_login(user)
    response = client.post("/profile/tokens/", {"name": "training box", "expires_in_days": "30"})
    assert response.status_code == 200
    token = ApiToken.objects.get(user=user)
    page = response.content.decode()
    start = page.index('id="new-api-token">') + len('id="new-api-token">')
    secret = page[start : page.index("</code>", start)]
    assert ApiToken.hash_secret(secret) == token.token_hash
    assert token.expires_at is not None
    again = client.get("/profile/tokens/").content.decode()
    assert secret not in again and token.prefix in again


def test_htmx_requests_get_only_the_section(client, user):
    client.force_login(user)
    response = client.post("/profile/tokens/", {"name": "ci"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert '<section id="api-tokens"' in body
    assert "<html" not in body


def test_invalid_form_is_a_400_with_the_message(client, user):
    client.force_login(user)
    response = client.post("/profile/tokens/", {"name": ""})
    assert response.status_code == 400
    assert not ApiToken.objects.exists()


def test_revoke_only_own_tokens(client, user):
    mine, _ = api_token_create(user=user, name="mine")
    theirs, _ = api_token_create(user=UserFactory(), name="theirs")
    client.force_login(user)
    client.post(f"/profile/tokens/{theirs.pk}/revoke/")
    client.post(f"/profile/tokens/{mine.pk}/revoke/")
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None


def test_anonymous_is_sent_to_log_in(client):
    response = client.get("/profile/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_template_tag_renders_the_section_for_the_profile_page(user):
    api_token_create(user=user, name="laptop")
    request = RequestFactory().get("/profile/")
    request.user = user
    html = Template("{% load api_tokens %}{% api_tokens_section %}").render(RequestContext(request, {}))
    assert "laptop" in html and 'id="api-tokens"' in html


def test_documentation_assets_are_vendored_with_licences():
    for path in (
        "vendor/swagger-ui/swagger-ui-bundle.js",
        "vendor/swagger-ui/swagger-ui-standalone-preset.js",
        "vendor/swagger-ui/swagger-ui.css",
        "vendor/swagger-ui/LICENSE",
        "vendor/redoc/bundles/redoc.standalone.js",
        "vendor/redoc/LICENSE",
    ):
        assert finders.find(path), path
