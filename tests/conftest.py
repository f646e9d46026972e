"""Fixtures shared by several test folders."""

import pytest

from tests.workers import Workers, celery_broker


@pytest.fixture
def broker_url():
    """This process's Celery app sends to the broker real workers consume (Redis db of REDIS_URL_FOR_TESTS)."""
    with celery_broker() as url:
        yield url


@pytest.fixture
def workers(broker_url, tmp_path, transactional_db):
    """Start real Celery workers with `workers.start(track, suites=…)`; all are killed when the test ends."""
    pool = Workers(broker_url, tmp_path)
    yield pool
    pool.kill_all()
    assert all(p.poll() is not None for p in pool.started)
