"""The HTTP side in a process of its own, so that it never holds the model process's interpreter lock.

Under HELM's load the server's HTTP threads parse, tokenize and answer about a millisecond per
request; in one process that work lands between the model thread's kernel launches (PyTorch releases
the lock at every operator call), and on an H200 a multiple-choice batch took up to five times longer
under load than alone (docs/benchmarks.md). So the server forks a front process before it loads the
model: the front owns the listening socket and the HTTP threads; the model process runs only the
scheduler and a pipe. Rows cross the pipe as token ids and come back as tokens and logprobs.

Either process ends when the other does: each side's reader sees the pipe close.

Several fronts (`--fronts N`, `ENGINE_FRONTS`; two by default on a box of 8 cores or more) accept on
the one listening socket, each with its pipe to the model process: one front's interpreter caps the
request rate (on an H100 box HELM's multiple-choice requests came at ~600 a second while the front
spent 1.5-1.7 ms of CPU on each, session 17; on another, two fronts took 3,000 requests' span from
3.1-3.2 s to 2.3-2.6 s, session 18: docs/benchmarks.md). Each front counts its own requests;
`/stats`, asked of any front, sums every front's counts.
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

# Counters the fronts keep (one per request); the model process keeps those of batches.
FRONT_FIELDS = ("requests", "failed_requests", "non_finite", "prompt_tokens", "output_tokens",
                "truncated_prompts", "http_cpu_seconds")  # fmt: skip
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
                message = self.conn.recv()
                if message[0] == "counts":  # the model process gathers every front's for /stats
                    with self._send_lock:
                        self.conn.send(("counts", message[1], self.counts()))
                    continue
                key, value = message
                slot = self._pending.pop(key)
                slot[1] = value
                slot[0].set()
        except (EOFError, OSError):
            self._on_lost()

    def counts(self) -> dict:
        """This front's request counters and its process's CPU seconds (summed over fronts by `merge_counts`)."""
        with self.stats.lock:
            counts = {key: getattr(self.stats, key) for key in FRONT_FIELDS}
            counts["latencies"] = list(self.stats.latencies)
        # This whole process's CPU time (accepting connections, their threads, parsing, tokenizing,
        # answering): one interpreter for its requests, which may set how fast they can come.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counts["front_cpu_seconds"] = usage.ru_utime + usage.ru_stime
        return counts

    def submit(self, rows: list[Row]) -> None:
        for row, result in zip(rows, self._call("run", [_payload(r) for r in rows]), strict=True):
            row.tokens, row.logprobs, row.prompt_logprobs, row.finished, row.finish_reason, row.error = result

    def stats_snapshot(self) -> dict:
        return self._call("stats")  # the model's counters with every front's (merge_counts)


def merge_counts(fronts: list[dict]) -> dict:
    """/stats' request counters from every front's `counts`: sums, and the latencies' summary."""
    merged = Stats(device="cpu")
    for counts in fronts:
        for key in FRONT_FIELDS:
            setattr(merged, key, getattr(merged, key) + counts[key])
        merged.latencies += counts["latencies"]
    snapshot = merged.snapshot()
    data = {key: snapshot[key] for key in FRONT_KEYS}
    data["front_cpu_seconds"] = round(sum(c["front_cpu_seconds"] for c in fronts), 6)
    data["fronts"] = len(fronts)
    return data


def fork_fronts(listen: socket.socket, count: int = 1) -> list[Connection]:
    """Start `count` front processes accepting on `listen`; returns the model side's end of each one's
    pipe. Call before loading the model: the children must not inherit CUDA state or the model thread."""
    from multiprocessing import Pipe

    model_ends: list[Connection] = []
    for _ in range(max(1, count)):
        model_end, front_end = Pipe()
        if os.fork() == 0:
            # Only its own pipe: a front must see the model process's end close when it exits.
            for end in [*model_ends, model_end]:
                end.close()
            try:
                _front(front_end, listen)
            finally:
                os._exit(0)
        front_end.close()
        model_ends.append(model_end)
    listen.close()  # only the fronts accept connections
    return model_ends


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


class _Front:
    """The model process's end of one front's pipe."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)


def serve_model(service: ModelService, conns: list[Connection]) -> None:
    """In the model process: run what the fronts send until one of them is gone."""
    fronts = [_Front(conn) for conn in conns]
    asked: dict[int, list] = {}  # a /stats' key -> the fronts' counts as they come
    asked_lock = threading.Lock()
    keys = itertools.count()
    gone = threading.Event()

    def stats(front: _Front, key: int) -> None:
        # In a thread of its own: the counts come back through the receivers, this front's included.
        mine = next(keys)
        slot: list = [threading.Event(), []]
        with asked_lock:
            asked[mine] = slot
        for other in fronts:
            other.send(("counts", mine))
        slot[0].wait(timeout=30)
        with asked_lock:
            asked.pop(mine, None)
        data = service.stats_snapshot()
        data.update(merge_counts(slot[1]))
        front.send((key, data))

    def receive(front: _Front) -> None:
        while True:
            try:
                kind, key, *args = front.conn.recv()
            except (EOFError, OSError):
                gone.set()
                return
            if kind == "run":
                rows = [_row(payload) for payload in args[0]]
                service.scheduler.submit_async(
                    rows, lambda rows=rows, key=key, front=front: front.send((key, [_result(r) for r in rows]))
                )
            elif kind == "stats":
                threading.Thread(target=stats, args=(front, key), daemon=True).start()
            elif kind == "counts":
                with asked_lock:
                    slot = asked.get(key)
                    if slot is not None:
                        slot[1].append(args[0])
                        if len(slot[1]) == len(fronts):
                            slot[0].set()
            else:
                log.error("unknown message %r from a front", kind)

    for front in fronts:
        front.send(ready_message(service))
    for front in fronts:
        threading.Thread(target=receive, args=(front,), name="from-front", daemon=True).start()
    gone.wait()
