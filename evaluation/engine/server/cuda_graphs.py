"""CUDA graph capture as the engine's graphs need it (packed batches: packed_graphs.py; decode steps:
static_decode.py).

Not `torch.cuda.graph()`: on entering it synchronizes, collects garbage and empties the allocator's
cache, every capture, and the next forwards then allocate their memory from the driver again. Here
every capture runs on one stream of its own, and only the first one (or a retry after a failed
capture) runs warm-up forwards first, for what must not first happen inside a capture; later shapes
were captured without them (session 11: 8-15 packed shapes an evaluation on an H100). `warm_up` runs
those forwards ahead (the server's warm-up), so that no capture in an evaluation needs them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)


class Capturer:
    """Captures forwards as CUDA graphs on its own stream. `shared_pool`: every graph allocates from
    one memory pool (graphs that never run at the same time and whose outputs are read before another
    replays); else each graph gets a pool of its own."""

    def __init__(self, *, shared_pool: bool):
        self.shared_pool = shared_pool
        self.captures = 0
        self.seconds = 0.0  # host time in captures, their warm-up forwards included
        self._stream: torch.cuda.Stream | None = None
        self._pool: Any = None
        self.warmed = False  # warm-up forwards ran on the stream (warm_up): no capture needs them

    @contextmanager
    def _on_stream(self) -> Iterator[None]:
        """Run on the capture stream, ordered after the current stream's work and before its next."""
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            yield
        torch.cuda.current_stream().wait_stream(self._stream)

    def warm_up(self, forward: Callable[[], Any], times: int = 2) -> None:
        """Run `forward` on the capture stream as the first capture's warm-ups would (a server's
        warm-up, before any request): later captures then skip them."""
        with self._on_stream():
            for _ in range(times):
                forward()
        self.warmed = True

    def forget_pool(self) -> None:
        """After every graph of the shared pool is dropped: the next capture starts a new pool."""
        self._pool = None

    def _capture(self, forward: Callable[[], Any], warm_ups: int) -> tuple[torch.cuda.CUDAGraph, Any]:
        started = time.perf_counter()
        if self.shared_pool and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with self._on_stream():
            for _ in range(warm_ups):  # cuBLAS's workspace on this stream, kernels compiled and loaded
                forward()
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                out = forward()
            finally:
                graph.capture_end()
        self.captures += 1
        self.seconds += time.perf_counter() - started
        return graph, out

    def capture(self, forward: Callable[[], Any], *, warm_ups: int = 1) -> tuple[torch.cuda.CUDAGraph, Any] | None:
        """(graph, the captured forward's output), or None if `forward` cannot be captured (logged).
        Warm-up forwards run before the first capture, and before a retry of one that failed without."""
        error: Exception | None = None
        for count in (warm_ups,) if self.captures == 0 and not self.warmed else (0, warm_ups):
            try:
                return self._capture(forward, count)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # a model or torch the graph cannot hold: the caller runs without
                error = e
        log.warning("CUDA graph capture failed; running without graphs", exc_info=error)
        return None


def replayed_ms(run: Callable[[], Any], replays: int = 50) -> tuple[float, Any]:
    """One call of `run` captured as a CUDA graph and replayed: (ms a replay, the captured call's output).
    For timing (lt_matmul's candidates, the benchmarks): a call on a side stream first, three replays
    before the timed ones."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays, out
