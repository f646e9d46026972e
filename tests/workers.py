"""Real Celery workers for the tests: started as subprocesses on the test database, consuming the cpu queue
and a track's GPU queue, killed with everything they started when their test ends.

The broker is Redis when it answers (REDIS_URL_FOR_TESTS, default db 3; .ci/run sets it, and parallel runs
pick different dbs), otherwise kombu's filesystem transport (which cannot redeliver a killed worker's job).
The fixtures `broker_url` and `workers` (tests/conftest.py) wrap what is here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/3"


def redis_url() -> str | None:
    url = os.environ.get("REDIS_URL_FOR_TESTS") or DEFAULT_REDIS_URL
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        return url
    except Exception:
        return None


@contextmanager
def celery_broker() -> Iterator[str]:
    """Point this process's Celery app at the broker the workers will use, starting from an empty queue."""
    from portal.celery import app

    url = redis_url()
    if url:
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        url = "filesystem://"
    previous = (app.conf.broker_url, app.conf.broker_transport_options)
    app.conf.broker_url = url
    if url.startswith("redis"):
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    _forget_connections(app)
    try:
        yield url
    finally:
        _forget_connections(app)
        app.conf.broker_url, app.conf.broker_transport_options = previous


def _forget_connections(app) -> None:
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{db.get('USER') or 'postgres'}@{host}:{port}/{db['NAME']}"


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the worker and everything it started (the model server and helm-run run in their own sessions)."""
    try:
        parent = psutil.Process(process.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=15)
    process.wait(timeout=15)


class Workers:
    def __init__(self, broker: str, tmp: Path):
        self.broker = broker
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []

    def start(
        self, track, *, suites: str = "open=offline-smoke", name: str = "pipeline-test@host", **env
    ) -> subprocess.Popen:
        environ = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.test_settings",
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": self.broker,
            "MEDIA_ROOT": settings.MEDIA_ROOT,
            "EVALUATION_SUITES": suites,
            "EVALUATION_HEARTBEAT_SECONDS": "1",
            "EVALUATION_WORK_DIR": str(self.tmp / "work"),
            "EVALUATION_HELM_THREADS": "2",
            "EVALUATION_HELM_PROCESSES": "1",  # standbys and shards alike, whatever the CPU count
            # Standbys import torch, transformers and HELM beside the test's own work: on two cores that
            # slows these tests (15 s in test_pipeline_worker.py); the tests that are about them turn them on.
            "EVALUATION_STANDBY": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO),
            **{key: str(value) for key, value in env.items()},
        }
        log = open(self.tmp / f"worker-{len(self.started)}.log", "wb")
        command = [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", f"cpu,{track.queue_name}"]
        command += ["-P", "prefork", "-c", "1", "-n", name, "--without-gossip", "--without-mingle", "-l", "INFO"]
        process = subprocess.Popen(
            command, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.tmp.glob("worker-*.log"))
        )

    def kill_all(self) -> None:
        for process in self.started:
            kill_tree(process)


def wait_for(condition, workers: Workers, *, timeout: float = 240, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{workers.logs()}")
