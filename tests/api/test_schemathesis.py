"""Property-based tests of every operation in the live OpenAPI schema (schemathesis 3): no input may
make the API answer a server error, and every answer's status is one the schema documents.

Bounded: a few examples per operation, as a participant (captain) and as an organizer.
"""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error, status_code_conformance

from tests.api.world import build_world

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture
def world():
    return build_world()


@pytest.fixture
def api_schema(world):
    document = APIClient().get("/api/v1/schema/?format=json").json()
    # The raw WSGI app closes the database connection after each request (Django's test client does not);
    # inside the test's transaction that would break every following request.
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield schemathesis.from_dict(document, app=get_wsgi_application())
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


schema = schemathesis.from_pytest_fixture("api_schema")

BOUNDED = settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _check(case, world, role: str) -> None:
    response = case.call_wsgi(headers={"Authorization": f"Bearer {world.tokens[role]}"})
    case.validate_response(response, checks=(not_a_server_error, status_code_conformance))


@schema.parametrize()
@BOUNDED
def test_api_as_participant(case, world):
    _check(case, world, "captain")


@schema.parametrize()
@BOUNDED
def test_api_as_organizer(case, world):
    _check(case, world, "organizer")
