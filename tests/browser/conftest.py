"""Playwright harness: Debian's Chromium, headless, against pytest-django's live_server.

Screenshots of failing tests go to test-artifacts/<test name>.png; journeys may save their own with `shot`.
"""

import re
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, DESKTOP, PHONE  # noqa: E402,F401  (re-exported for journeys)


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
