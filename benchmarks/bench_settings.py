"""Settings of the leaderboard benchmark: production settings, plus one trivial view to compare with."""

import os

os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")

from portal.settings import *  # noqa: E402,F403

ROOT_URLCONF = "benchmarks.bench_urls"
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
# No collectstatic step in the benchmark: plain static URLs (the manifest lookup costs about the same).
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405

# `--cold`: no cache at all, so every answer is read and rendered from the database.
if os.environ.get("LEADERBOARD_BENCH_COLD") == "1":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
