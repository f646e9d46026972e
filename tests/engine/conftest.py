"""Tiny seeded models shared by every engine test in the session (built once; a few seconds on CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from evaluation.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    from evaluation.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", seed=0)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_model_dir(request) -> Path:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


class InProcessServer:
    """A model server running in this process's threads on a free port."""

    def __init__(self, argv: list[str]):
        from evaluation.engine.server import serve

        self.http = serve(["--host", "127.0.0.1", "--port", "0", "--device", "cpu", *argv])
        host, port = self.http.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.service = self.http.service

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.service.stop()


@pytest.fixture(scope="session")
def start_server():
    """Factory: start_server(model_dir, *extra_cli_args) -> InProcessServer, stopped at session end."""
    started: list[InProcessServer] = []

    def start(model_dir: Path, *args: str) -> InProcessServer:
        server = InProcessServer(["--model", str(model_dir), *args])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(start_server, tiny_llama_dir) -> InProcessServer:
    return start_server(tiny_llama_dir)


@pytest.fixture(scope="session")
def gpt2_server(start_server, tiny_gpt2_dir) -> InProcessServer:
    return start_server(tiny_gpt2_dir)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def any_server(request) -> InProcessServer:
    """Each tiny architecture's server in turn."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    """The tiny Llama loaded in fp32 on the CPU, once per test module."""
    from evaluation.engine.loading import load_model

    return load_model(tiny_llama_dir, device="cpu", dtype="float32")
