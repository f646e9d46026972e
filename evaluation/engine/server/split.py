"""The HTTP side in a process of its own, so that it never holds the model process's interpreter lock.

Under HELM's load the server's HTTP threads parse, tokenize and answer about a millisecond per
request; in one process that work lands between the model thread's kernel launches (PyTorch releases
the lock at every operator call), and on an H200 a multiple-choice batch took up to five times longer
under load than alone (docs/benchmarks.md). So the server forks a front process before it loads the
model: the front owns the listening socket and the HTTP threads; the model process runs only the
scheduler and a pipe. Rows cross the pipe as token ids and come back as tokens and logprobs.

Either process ends when the other does: each side's reader sees the pipe close.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from evaluation.engine.server.app import EngineHTTPServer, Frontend, ModelService
from evaluation.engine.server.generation import Row
from evaluation.engine.server.stats import Stats

log = logging.getLogger(__name__)

# Counters the front keeps (one per request); the model process keeps those of batches.
FRONT_KEYS = (
    "requests",
    "failed_requests",
    "non_finite_outputs",
    "prompt_tokens",
    "output_tokens",
    "truncated_prompts",
    "http_cpu_seconds",
    "latency_seconds",
)


def _payload(row: Row) -> tuple:
    # A sampled row's generator is made again from its seed on the other side.
    sampled = row.generator is not None
    return (
        row.prompt_ids,
        row.max_new_tokens,
        row.temperature,
        row.top_p,
        row.echo,
        row.stop_sequences,
        row.seed,
        sampled,
    )


def _row(payload: tuple) -> Row:
    prompt_ids, max_new_tokens, temperature, top_p, echo, stops, seed, sampled = payload
    generator = torch.Generator().manual_seed(seed) if sampled else None
    return Row(prompt_ids, max_new_tokens, temperature, top_p, echo, stops, generator, seed)


def _result(row: Row) -> tuple:
    return (row.tokens, row.logprobs, row.prompt_logprobs, row.finished, row.finish_reason, row.error)


class RemoteService(Frontend):
    """The endpoints in the front process; the model answers over `conn`."""

    def __init__(self, conn: Connection, ready: dict, on_lost: Callable[[], None] | None = None):
        super().__init__(ready["tokenizer"], ready["facts"], seed=ready["seed"])
        # Its counters must never ask CUDA for memory figures: that would create a CUDA context, and
        # take GPU memory, in this process too. The model process reports the GPU's.
        self.stats = Stats(device="cpu")
        self.startup = ready["startup"]
        self.conn = conn
        # The model process gone, this process has no purpose left (tests pass something gentler).
        self._on_lost = on_lost or (lambda: os._exit(0))
        self._send_lock = threading.Lock()
        self._pending: dict[int, list] = {}
        self._keys = itertools.count()
        threading.Thread(target=self._receive, name="from-model", daemon=True).start()

    def _call(self, kind: str, *args: Any) -> Any:
        key = next(self._keys)
        slot: list = [threading.Event(), None]
        self._pending[key] = slot
        with self._send_lock:
            self.conn.send((kind, key, *args))
        slot[0].wait()
        return slot[1]

    def _receive(self) -> None:
        try:
            while True:
                key, value = self.conn.recv()
                slot = self._pending.pop(key)
                slot[1] = value
                slot[0].set()
        except (EOFError, OSError):
            self._on_lost()

    def submit(self, rows: list[Row]) -> None:
        for row, result in zip(rows, self._call("run", [_payload(r) for r in rows]), strict=True):
            row.tokens, row.logprobs, row.prompt_logprobs, row.finished, row.finish_reason, row.error = result

    def stats_snapshot(self) -> dict:
        data = self._call("stats")
        front = self.stats.snapshot()
        data.update({key: front[key] for key in FRONT_KEYS})
        # This whole process's CPU time (accepting connections, their threads, parsing, tokenizing,
        # answering): one interpreter for every request, which may set how fast they can come.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data["front_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 6)
        return data


def fork_front(listen: socket.socket) -> Connection:
    """Start the front process on `listen`; returns the model side's end of the pipe. Call before
    loading the model: the child must not inherit CUDA state or the model thread."""
    from multiprocessing import Pipe

    model_end, front_end = Pipe()
    if os.fork() == 0:
        model_end.close()
        try:
            _front(front_end, listen)
        finally:
            os._exit(0)
    front_end.close()
    listen.close()  # only the front accepts connections
    return model_end


def _front(conn: Connection, listen: socket.socket) -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(0))
    try:
        kind, ready = conn.recv()  # the model loaded and warmed up, or the process is gone
    except (EOFError, OSError):
        return
    service = RemoteService(conn, ready)
    from evaluation.engine import heap

    heap.freeze(collect=False)
    server = EngineHTTPServer(listen.getsockname()[:2], service, listen_socket=listen)
    server.serve_forever()


def ready_message(service: ModelService) -> tuple:
    return ("ready", {"tokenizer": service.tokenizer, "facts": service.facts, "seed": service.seed,
                      "startup": service.startup})  # fmt: skip


def serve_model(service: ModelService, conn: Connection) -> None:
    """In the model process: run what the front sends until the front is gone."""
    lock = threading.Lock()

    def reply(key: int, value: Any) -> None:
        with lock:
            conn.send((key, value))

    conn.send(ready_message(service))
    while True:
        try:
            kind, key, *args = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "run":
            rows = [_row(payload) for payload in args[0]]
            service.scheduler.submit_async(rows, lambda rows=rows, key=key: reply(key, [_result(r) for r in rows]))
        elif kind == "stats":
            reply(key, service.stats_snapshot())
        else:
            log.error("unknown message %r from the front", kind)
