"""Counters the server keeps for the runner's efficiency report (read once at the end via GET /stats)."""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field


def _timeline() -> list[dict] | None:
    # ENGINE_TIMELINE=1: /stats lists when each request arrived and when each batch ran (the speed
    # work's question of how HELM's requests come in, benchmarks/helm_speed.py prints it); off by default.
    return [] if os.environ.get("ENGINE_TIMELINE") == "1" else None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Stats:
    device: str = "cpu"
    requests: int = 0
    failed_requests: int = 0
    non_finite: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    truncated_prompts: int = 0
    batches: int = 0
    batch_rows: int = 0
    max_batch_rows: int = 0
    shared_prefix_tokens: int = 0
    prefix_reuses: int = 0
    decode_steps: int = 0
    out_of_memory_splits: int = 0
    # Continuous batching: rows that joined a running decode batch, and joins refused for memory.
    joined_rows: int = 0
    declined_joins: int = 0
    # Single-token batches that waited for more rows (Scheduler._fill), and how long in all.
    filled_batches: int = 0
    fill_wait_seconds: float = 0.0
    # Static decode loops: in all, loading each batch's first rows, and rows joining (host seconds);
    # and the prefills of those first rows before their loop.
    decode_seconds: float = 0.0
    decode_prefill_seconds: float = 0.0
    decode_start_seconds: float = 0.0
    decode_join_seconds: float = 0.0
    decode_joins: int = 0  # times rows joined a running decode batch (each a prefill of its own)
    busy_seconds: float = 0.0
    # Packed single-token batches: their seconds in all, and the host's share before each one's
    # forward was launched (grouping rows by prefix, packing, filling the graph's inputs).
    packed_seconds: float = 0.0
    packed_launch_seconds: float = 0.0
    # Pipelined packed batches timed on the GPU (CUDA events from the first kernel to the answers' copy).
    packed_gpu_batches: int = 0
    packed_gpu_seconds: float = 0.0
    # CPU time of the model thread (batches) and of the HTTP threads (parsing, tokenizing, answering).
    # In one process they share one interpreter lock and the second slows the first; by default the
    # HTTP threads run in a front process of their own (split.py).
    model_cpu_seconds: float = 0.0
    http_cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    timeline: list[dict] | None = field(default_factory=_timeline)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_request(self, *, latency: float, prompt_tokens: int, output_tokens: int, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            self.failed_requests += 0 if ok else 1
            self.prompt_tokens += prompt_tokens
            self.output_tokens += output_tokens
            self.latencies.append(latency)

    def record_batch(
        self,
        *,
        rows: int,
        seconds: float,
        skipped_tokens: int = 0,
        prefix_reused: bool = False,
        decode_steps: int = 0,
        cpu_seconds: float = 0.0,
    ) -> None:
        with self.lock:
            self.model_cpu_seconds += cpu_seconds
            self.decode_steps += decode_steps
            self.batches += 1
            self.batch_rows += rows
            self.max_batch_rows = max(self.max_batch_rows, rows)
            self.busy_seconds += seconds
            # Prompt tokens whose prefill was skipped because rows shared a prefix.
            self.shared_prefix_tokens += skipped_tokens
            self.prefix_reuses += 1 if prefix_reused else 0

    def event(self, kind: str, **data) -> None:
        """One timeline entry (time.monotonic seconds), kept only with ENGINE_TIMELINE=1."""
        if self.timeline is not None:
            with self.lock:
                self.timeline.append({"kind": kind, "t": round(time.monotonic(), 6), **data})

    def add(self, name: str, amount: float = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict:
        import torch

        with self.lock:
            latencies = list(self.latencies)
            timeline = list(self.timeline) if self.timeline is not None else None
            data = {
                "requests": self.requests,
                "failed_requests": self.failed_requests,
                "non_finite_outputs": self.non_finite,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "truncated_prompts": self.truncated_prompts,
                "batches": self.batches,
                "mean_batch_rows": self.batch_rows / self.batches if self.batches else 0.0,
                "max_batch_rows": self.max_batch_rows,
                "shared_prefix_tokens": self.shared_prefix_tokens,
                "prefix_reuses": self.prefix_reuses,
                "decode_steps": self.decode_steps,
                "out_of_memory_splits": self.out_of_memory_splits,
                "joined_rows": self.joined_rows,
                "declined_joins": self.declined_joins,
                "filled_batches": self.filled_batches,
                "fill_wait_seconds": round(self.fill_wait_seconds, 6),
                "decode_seconds": round(self.decode_seconds, 6),
                "decode_start_seconds": round(self.decode_start_seconds, 6),
                "decode_prefill_seconds": round(self.decode_prefill_seconds, 6),
                "decode_join_seconds": round(self.decode_join_seconds, 6),
                "decode_joins": self.decode_joins,
                "busy_seconds": round(self.busy_seconds, 6),
                "packed_seconds": round(self.packed_seconds, 6),
                "packed_launch_seconds": round(self.packed_launch_seconds, 6),
                "packed_gpu_batches": self.packed_gpu_batches,
                "packed_gpu_seconds": round(self.packed_gpu_seconds, 6),
                "model_cpu_seconds": round(self.model_cpu_seconds, 6),
                "http_cpu_seconds": round(self.http_cpu_seconds, 6),
            }
        data["latency_seconds"] = {
            "count": len(latencies),
            "mean": sum(latencies) / len(latencies) if latencies else 0.0,
            "p50": percentile(latencies, 50) if latencies else 0.0,
            "p95": percentile(latencies, 95) if latencies else 0.0,
            "max": max(latencies) if latencies else 0.0,
        }
        if timeline is not None:
            data["timeline"] = timeline
        on_gpu = self.device.startswith("cuda") and torch.cuda.is_available()
        data["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device)) if on_gpu else None
        data["peak_gpu_memory_reserved_bytes"] = int(torch.cuda.max_memory_reserved(self.device)) if on_gpu else None
        # The caching allocator's calls to the driver since the process began: a cudaMalloc can wait, a
        # cudaFree or a retry (blocks freed to make room) waits for the whole GPU.
        if on_gpu:
            counts = torch.cuda.memory_stats(self.device)
            names = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")
            data["gpu_allocator"] = {name[4:]: counts.get(name) for name in names}
        else:
            data["gpu_allocator"] = None
        # ru_maxrss is in kilobytes on Linux.
        data["peak_host_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return data
