"""The engine's model server as the benchmarks start it: a subprocess on a free port, waited for."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from evaluation.engine.runner import free_port


@contextmanager
def engine_server(model: Path, *args: str, **popen) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m evaluation.engine.server --model MODEL ARGS` once it answers /health: (process, URL).
    Stopped on leaving."""
    port = free_port()
    command = [sys.executable, "-m", "evaluation.engine.server", "--model", str(model), "--port", str(port)]
    server = subprocess.Popen(command + list(args), **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.RequestException:  # refused, or waiting in the backlog while it loads
                time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)
