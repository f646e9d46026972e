"""Pinned host buffers made once and used in turn, for the packed batches' small copies to and from the GPU.

A copy from pageable memory first waits for every kernel queued before it (session 19), so these copies
go through page-locked memory. `pin_memory()` for each copy made a page-locked block whenever the
pinned allocator had none free of that size: a `cudaHostAlloc`, which takes a driver-wide lock and
can stall the calling thread (vllm-project/vllm#37006 measured stalls of up to ~12 ms under load). Here
each size has a ring of at least SLOTS buffers: a buffer is written again only once its last copy is
done, and a ring whose next buffer is still being copied gets one more (a batch of many chunks of one
size) instead of waiting.
"""

from __future__ import annotations

from array import array
from typing import Any

import torch

SLOTS = 4
SMALLEST = 64  # elements: sizes are rounded up to a power of two, so a few rings serve every batch


class _Slot:
    def __init__(self, buffer: torch.Tensor):
        self.buffer = buffer
        self.done: torch.cuda.Event | None = None  # recorded after the buffer's last copy

    def free(self) -> bool:
        return self.done is None or self.done.query()


class Staging:
    def __init__(self, device: torch.device):
        self.device = device
        self._rings: dict[tuple[torch.dtype, int], tuple[list[_Slot], list[int]]] = {}
        self.buffers = 0  # page-locked buffers made (each a cudaHostAlloc at most)

    def _slot(self, dtype: torch.dtype, n: int) -> _Slot:
        size = max(SMALLEST, 1 << (n - 1).bit_length())
        ring = self._rings.get((dtype, size))
        if ring is None:
            ring = self._rings[(dtype, size)] = ([self._new(size, dtype) for _ in range(SLOTS)], [0])
        slots, turn = ring
        if not slots[turn[0]].free():  # its copy is still queued: one more buffer rather than a wait
            slots.insert(turn[0], self._new(size, dtype))
        slot = slots[turn[0]]
        turn[0] = (turn[0] + 1) % len(slots)
        return slot

    def _new(self, size: int, dtype: torch.dtype) -> _Slot:
        self.buffers += 1
        return _Slot(self._buffer(size, dtype))

    @staticmethod
    def _buffer(size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, pin_memory=True)

    def _copied(self, slot: _Slot) -> None:
        slot.done = torch.cuda.Event(enable_timing=True)  # also the end of a batch's GPU time (Scheduler)
        slot.done.record()

    def to_device(self, values: array, dtype: torch.dtype, out: torch.Tensor) -> None:
        """out[: len(values)] ← values, queued behind the GPU's work without waiting for it."""
        host = torch.frombuffer(values, dtype=dtype) if len(values) else torch.empty(0, dtype=dtype)
        if self.device.type != "cuda":
            out[: len(values)].copy_(host)
            return
        slot = self._slot(dtype, len(values))
        part = slot.buffer[: len(values)]
        part.copy_(host)
        out[: len(values)].copy_(part, non_blocking=True)
        self._copied(slot)

    def longs(self, *parts: array) -> list[torch.Tensor]:
        """Arrays of longs on the device, each a view of one new tensor filled by one `to_device` copy."""
        joined = array("q")
        for part in parts:
            joined.extend(part)
        out = torch.empty(len(joined), dtype=torch.long, device=self.device)
        self.to_device(joined, torch.long, out)
        views, start = [], 0
        for part in parts:
            views.append(out[start : start + len(part)])
            start += len(part)
        return views

    def from_device(self, values: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """A host tensor that holds `values` once the event (None: at once, on a CPU) has passed. It stays
        valid for at least SLOTS - 1 more calls of its size: read it before."""
        if self.device.type != "cuda":
            return values.clone(), None
        slot = self._slot(values.dtype, values.numel())
        part = slot.buffer[: values.numel()].view(values.shape)
        part.copy_(values, non_blocking=True)
        self._copied(slot)
        return part, slot.done
