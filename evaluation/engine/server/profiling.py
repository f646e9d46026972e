"""Where a server's batch time goes, for the speed work: `ENGINE_PROFILE_DIR=dir` makes the model thread
time a window of batches, then run the same batches again at once while every HTTP thread waits on
them (no other Python work beside the model's), then once more under torch.profiler, and write:

- `dir/batches.json`: per batch its rows, tokens, shared prefix, seconds under load and seconds alone;
- `dir/profile.txt`: the profiler's operator tables of the last pass (by GPU time and by CPU time);
- `dir/trace.json`: that pass's timeline (chrome://tracing, Perfetto).

If alone is much faster than under load, the model thread waits for the GIL or the HTTP threads;
if both are slow, the table says which operators. Off unless the variable is set: no cost otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from evaluation.engine.server.generation import BatchGenerator, Joining, Row


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _fresh(row: Row) -> Row:
    return dataclasses.replace(row, tokens=[], logprobs=[], prompt_logprobs=None, finished=False,
                               finish_reason="", error=None, generator=None)  # fmt: skip


class BatchProfiler:
    def __init__(self, out_dir: Path, start: int = 20, count: int = 12):
        self.out_dir, self.start, self.count = out_dir, start, count
        self.seen = 0
        self.window: list[dict] = []
        self.replays: list[list[Row]] = []

    @classmethod
    def from_env(cls) -> BatchProfiler | None:
        path = os.environ.get("ENGINE_PROFILE_DIR")
        if not path:
            return None
        start = int(os.environ.get("ENGINE_PROFILE_START", "20"))
        count = int(os.environ.get("ENGINE_PROFILE_COUNT", "12"))
        return cls(Path(path), start, count)

    def run(self, batch: list[Row], generator: BatchGenerator, joining: Joining | None = None) -> None:
        """Runs `generator.generate(batch, joining)`, or, when it falls in the window, times it without
        joins (its replays must be the same batch)."""
        index = self.seen
        self.seen += 1
        if not self.start <= index < self.start + self.count:
            generator.generate(batch, joining)
            return
        # Sampled rows draw from their own generators: replay only greedy ones.
        self.replays.append([_fresh(r) for r in batch if r.greedy])
        _sync()
        started = time.perf_counter()
        generator.generate(batch)
        _sync()
        self.window.append({
            "rows": len(batch),
            "prompt_tokens": sum(len(r.prompt_ids) for r in batch),
            "new_tokens": max(r.max_new_tokens for r in batch),
            "shared_prefix": generator.last_shared_prefix,
            "skipped_tokens": generator.last_skipped_tokens,
            "prefix_reused": generator.last_prefix_reused,
            "decode_steps": generator.last_decode_steps,
            "seconds_under_load": round(time.perf_counter() - started, 5),
        })  # fmt: skip
        if index == self.start + self.count - 1:
            self._finish(generator)

    def _replay(self) -> list[list[Row]]:
        return [[_fresh(r) for r in rows] for rows in self.replays]

    def _finish(self, generator: BatchGenerator) -> None:
        for entry, rows in zip(self.window, self._replay(), strict=True):
            _sync()
            started = time.perf_counter()
            if rows:
                generator.generate(rows)
            _sync()
            entry["seconds_alone"] = round(time.perf_counter() - started, 5)
            entry["skipped_tokens_alone"] = generator.last_skipped_tokens  # the store may serve more now
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for rows in self._replay():
                if rows:
                    generator.generate(rows)
            _sync()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "batches.json").write_text(json.dumps(self.window, indent=1))
        # The timeline: whether the GPU waits for the host's launches, and where.
        profiler.export_chrome_trace(str(self.out_dir / "trace.json"))
        averages = profiler.key_averages()
        tables = [averages.table(sort_by="self_cpu_time_total", row_limit=40)]
        if torch.cuda.is_available():
            tables.insert(0, averages.table(sort_by="self_cuda_time_total", row_limit=40))
        (self.out_dir / "profile.txt").write_text("\n\n".join(tables))
