"""Pipelined single-token batches (`ENGINE_PIPELINE`): a packed batch of greedy rows is left running on
the GPU (`BatchGenerator.generate(defer=True)`) while the model thread gathers, groups and launches the
next one behind it; the first is read and answered only then (Scheduler._settle). The host's part of a
batch (4-9 ms of a ~30 ms 1.1 B batch on an H100, session 19) then overlaps the GPU's work.

For that, the next batch's gather must end before the GPU is done, by about the host's time to launch
a batch: `Pace` predicts both from the batches before."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evaluation.engine.server.switches import switch

if TYPE_CHECKING:
    from evaluation.engine.server.generation import LaunchedBatch, Row

# While a batch runs on the GPU, the model thread looks for the next batch's rows this often.
POLL_SECONDS = 0.0005
# Weight of the newest batch in the running means of `Pace`.
PACE_WEIGHT = 0.25


def pipelining(device: str, setting: str | None = None) -> bool:
    """`ENGINE_PIPELINE`: auto (on a GPU), 1 or 0. On a CPU the forward runs on the host, so nothing
    would overlap: answers would only wait."""
    on = switch("ENGINE_PIPELINE", setting=setting)
    return device.startswith("cuda") if on is None else on


@dataclass
class Inflight:
    """A packed batch left running on the GPU, read and recorded once the next batch is launched."""

    launched: LaunchedBatch
    batch: list[Row]
    began: float  # time.monotonic() at its start (the timeline)
    started: float  # time.perf_counter() at its start
    cpu_seconds: float  # the model thread's CPU time on it so far
    facts: dict  # the generator's figures of this batch (Scheduler._facts)
    tokens: int  # the tokens its forward computes
    done_by: float | None = None  # perf_counter() by which the GPU should be done with it (Pace)
    items: list[Any] = field(default_factory=list)  # its gather's requests (Work), answered once it is read


class Pace:
    """Running means of the GPU's seconds per computed token (CUDA events around each pipelined batch)
    and of the host's seconds from a batch's start to its launch; from them, when the GPU should be done
    with the batches queued on it, and when the next gather must end to be launched by then."""

    def __init__(self, enabled: bool | None = None) -> None:
        # `ENGINE_PACE=0`: gathers beside a running batch last until it is done (for comparisons).
        self.enabled = switch("ENGINE_PACE", "1") is not False if enabled is None else enabled
        self.gpu_per_token: float | None = None
        self.launch: float | None = None
        self._free_at = 0.0  # perf_counter() by which the GPU should be done with what is queued

    @staticmethod
    def _mean(old: float | None, new: float) -> float:
        return new if old is None else (1 - PACE_WEIGHT) * old + PACE_WEIGHT * new

    def launched(self, started: float, tokens: int, launch_seconds: float) -> float | None:
        """A batch that started (perf_counter) at `started`, queued behind what the GPU has: when the GPU
        should be done with it (None until a batch has been timed)."""
        self.launch = self._mean(self.launch, launch_seconds)
        if self.gpu_per_token is None:
            return None
        # Its work starts once the GPU is done with the batches before, or as soon as it is launched.
        self._free_at = max(self._free_at, started + launch_seconds) + tokens * self.gpu_per_token
        return self._free_at

    def timed(self, tokens: int, gpu_seconds: float | None) -> None:
        """A batch's measured GPU time (Scheduler._settle leaves out batches that prefilled a prefix or
        captured a graph, and the server the warm-up's one-token batch)."""
        if gpu_seconds is not None and tokens > 0:
            self.gpu_per_token = self._mean(self.gpu_per_token, gpu_seconds / tokens)

    def gather_until(self, inflight: Inflight) -> float | None:
        """When the gather beside `inflight` should end so that its batch is launched by the time the GPU
        is done (None: until it is done)."""
        if not self.enabled or inflight.done_by is None or self.launch is None:
            return None
        return inflight.done_by - self.launch
