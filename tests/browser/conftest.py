"""Playwright harness: Debian's Chromium, headless, against pytest-django's live_server.

Screenshots of failing tests go to test-artifacts/<test name>.png; journeys may save their own with `shot`.
"""

import os
import re
from pathlib import Path

import pytest
from django.test.testcases import _MediaFilesHandler

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make here are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Django's live server serves MEDIA_URL from MEDIA_ROOT; the portal has no public media URL (MEDIA_URL = None),
# which that handler cannot parse. Nothing uploaded may be served without a permission check, so it serves nothing.
_MediaFilesHandler._should_handle = lambda self, path: False

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


# Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it is open, and other
# modules (tests/browser/test_leaderboard.py, tests/evaluation/test_browser.py) start their own; one left open for
# the session made every later one fail ("using Playwright Sync API inside the asyncio loop").
@pytest.fixture(scope="module")
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


@pytest.fixture
def new_page(browser, request):
    """Factory for isolated browser sessions (one per person in a journey); all are screenshotted on failure."""
    contexts = []

    def make(viewport: dict | None = None, timezone_id: str = "Europe/Berlin"):
        context = browser.new_context(viewport=viewport or DESKTOP, timezone_id=timezone_id, locale="en-GB")
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                page.screenshot(path=str(ARTIFACTS / f"{_safe(request.node.name)}-{i}-{j}.png"), full_page=True)
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def shot(request):
    """shot(page, "step") saves test-artifacts/<test>/<step>.png: evidence of what the journey saw."""

    def save(page, name: str) -> Path:
        folder = ARTIFACTS / _safe(request.node.name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def verification_link(mailoutbox, address: str) -> str:
    """The e-mail confirmation link allauth sent to `address` (read from the locmem outbox)."""
    for message in reversed(mailoutbox):
        if address in message.to:
            match = re.search(r"https?://\S+/accounts/confirm-email/\S+/", message.body)
            if match:
                return match.group(0)
    raise AssertionError(f"no verification e-mail to {address} in {[m.to for m in mailoutbox]}")
