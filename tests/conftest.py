"""Fixtures shared by every test folder. Browser tests share ONE Playwright and ONE Chromium per session:
Playwright's sync API refuses to start a second time while its event loop runs in this thread.
"""

import os
from pathlib import Path

import pytest
from django.test.testcases import _MediaFilesHandler

from tests.workers import Workers, celery_broker

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make here are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Django's live server serves MEDIA_URL from MEDIA_ROOT; the portal has no public media URL (MEDIA_URL = None),
# which that handler cannot parse. Nothing uploaded may be served without a permission check, so it serves nothing.
_MediaFilesHandler._should_handle = lambda self, path: False

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


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
