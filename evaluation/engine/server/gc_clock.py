"""How long the garbage collector held this process's interpreter: a full collection stops every thread,
the model thread between its kernel launches included (`heap.freeze` keeps the imports out of them)."""

from __future__ import annotations

import gc
import time


class GcClock:
    """Collections and their seconds by generation since `start`, and the longest one."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._began: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            took = time.perf_counter() - self._began
            generation = min(int(info.get("generation", 2)), 2)
            self.counts[generation] += 1
            self.seconds[generation] += took
            self.longest = max(self.longest, took)
            self._began = None

    def start(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def snapshot(self) -> dict:
        return {
            "collections": list(self.counts),
            "seconds": [round(s, 6) for s in self.seconds],
            "longest_seconds": round(self.longest, 6),
        }
