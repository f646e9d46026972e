"""The one error format, token authentication, throttling, the schema and its documentation pages."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from portal.api.models import ApiToken
from portal.api.services import api_token_create, api_token_revoke
from portal.errors import ServiceError
from tests.api.conftest import token_client
from tests.factories import ChallengeFactory, TrackFactory, UserFactory

pytestmark = pytest.mark.django_db


def _assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_unknown_api_url_answers_404_in_the_error_format(client):
    error = _assert_error(client.get("/api/v1/no-such-thing/"), 404, "not_found")
    assert error["fields"] == {}


def test_non_api_404_stays_a_page(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "application/json" not in response["Content-Type"]


def test_anonymous_on_private_endpoint_gets_401_with_challenge(api_client):
    response = api_client.get("/api/v1/me/tokens/")
    error = _assert_error(response, 401, "not_authenticated")
    assert "Bearer" in error["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_missing_challenge_is_a_404_with_message(api_client):
    error = _assert_error(api_client.get("/api/v1/challenge/"), 404, "not_found")
    assert error["message"] == "No challenge is running."


def test_validation_errors_list_fields(client, user):
    client.force_login(user)
    error = _assert_error(
        client.post("/api/v1/me/tokens/", {"name": ""}, content_type="application/json"), 400, "invalid"
    )
    assert "name" in error["fields"]
    assert error["message"].startswith("name:")


def test_service_error_keeps_its_code_status_and_field(client, user):
    client.force_login(user)
    past = (timezone.now() - timedelta(days=1)).isoformat()
    response = client.post("/api/v1/me/tokens/", {"name": "x", "expires_at": past}, content_type="application/json")
    error = _assert_error(response, 400, "invalid")
    assert error["fields"] == {"expires_at": ["The expiry date must be in the future."]}


def test_malformed_json_is_a_400(client, user):
    client.force_login(user)
    response = client.post("/api/v1/me/tokens/", "{not json", content_type="application/json")
    _assert_error(response, 400, "parse_error")


def test_wrong_method_is_a_405(api_client):
    _assert_error(api_client.delete("/api/v1/tracks/"), 405, "method_not_allowed")


def test_token_authenticates_and_records_last_use(user):
    client = token_client(user)
    assert client.get("/api/v1/me/tokens/").status_code == 200
    token = ApiToken.objects.get(user=user)
    assert token.last_used_at is not None


def test_only_the_hash_of_a_token_is_stored(user):
    token, secret = api_token_create(user=user, name="box")
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret not in {stored.token_hash, stored.prefix, stored.name}
    assert stored.token_hash == ApiToken.hash_secret(secret)
    assert secret.startswith(stored.prefix) and len(stored.prefix) < len(secret) // 3


@pytest.mark.parametrize(
    "state, message",
    [("revoked", "was revoked"), ("expired", "expired on"), ("unknown", "Unknown API token")],
)
def test_unusable_tokens_get_a_clear_401(api_client, user, state, message):
    token, secret = api_token_create(user=user, name="box")
    if state == "revoked":
        api_token_revoke(user=user, token_id=token.pk)
    elif state == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        secret = secret[:-2] + "xx"
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    error = _assert_error(api_client.get("/api/v1/me/tokens/"), 401, "authentication_failed")
    assert message in error["message"]


def test_a_token_cannot_mint_tokens_but_a_session_can(client, user):
    response = token_client(user).post("/api/v1/me/tokens/", {"name": "more"}, format="json")
    _assert_error(response, 403, "permission_denied")
    client.force_login(user)
    response = client.post("/api/v1/me/tokens/", {"name": "laptop"}, content_type="application/json")
    assert response.status_code == 201
    secret = response.json()["token"]
    assert ApiToken.objects.get(token_hash=ApiToken.hash_secret(secret)).name == "laptop"
    assert "token" not in client.get("/api/v1/me/tokens/").json()[0]


def test_revoking_someone_elses_token_is_a_404(user):
    other = UserFactory()
    token, _ = api_token_create(user=other, name="theirs")
    _assert_error(token_client(user).delete(f"/api/v1/me/tokens/{token.pk}/"), 404, "not_found")
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_token_name_is_required_by_the_service(user):
    with pytest.raises(ServiceError) as caught:
        api_token_create(user=user, name="   ")
    assert caught.value.field == "name"


def test_throttling_answers_429_with_retry_after(api_client, settings):
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "anon": "2/min"}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        assert api_client.get("/api/v1/tracks/").status_code == 200
        assert api_client.get("/api/v1/tracks/").status_code == 200
        response = api_client.get("/api/v1/tracks/")
    error = _assert_error(response, 429, "throttled")
    assert "try again in" in error["message"]
    assert int(response["Retry-After"]) > 0


def test_public_challenge_lists_tracks_and_prizes(api_client):
    challenge = ChallengeFactory()
    track = TrackFactory(challenge=challenge, slug="4090")
    track.prizes.create(kind="place", place=1, amount_usd=5000)
    body = api_client.get("/api/v1/challenge/").json()
    assert body["slug"] == challenge.slug
    assert [d["label"] for d in body["dates"]][0] == "Challenge start"
    assert body["tracks"][0]["slug"] == "4090"
    assert body["tracks"][0]["prizes"] == [{"kind": "place", "place": 1, "amount_usd": 5000, "count": 1}]
    assert api_client.get("/api/v1/tracks/4090/").json()["gpu_memory_gb"] == 24


def test_schema_and_documentation_pages_serve_vendored_assets(client):
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert "apiToken" in document["components"]["securitySchemes"]
    assert "Error" in document["components"]["schemas"]
    docs = client.get("/api/v1/docs/").content.decode()
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn." not in docs
    redoc = client.get("/api/v1/redoc/").content.decode()
    assert "/static/vendor/redoc/bundles/redoc.standalone.js" in redoc and "cdn." not in redoc
