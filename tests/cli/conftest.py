import pytest


@pytest.fixture(scope="session", autouse=True)
def _media_url_for_live_server():
    """MEDIA_URL is None (nothing uploaded is ever served publicly), but the live server's media handler
    parses it as a URL when it starts; give it a prefix nothing uses."""
    from django.conf import settings

    previous = settings.MEDIA_URL
    settings.MEDIA_URL = "/media-not-served/"
    yield
    settings.MEDIA_URL = previous
