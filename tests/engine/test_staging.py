"""The packed batches' pinned host buffers (staging.py), their rings' turns checked without a GPU."""

from __future__ import annotations

from array import array

import torch

from evaluation.engine.server import staging
from evaluation.engine.server.staging import Staging


class _Event:
    """A copy's end: done when the test says so."""

    def __init__(self):
        self.finished = False

    def query(self) -> bool:
        return self.finished


class _Rings(Staging):
    """The rings as on a GPU, with host tensors for pinned ones and events the test finishes."""

    def __init__(self):
        super().__init__(torch.device("cuda"))
        self.events: list[_Event] = []

    @staticmethod
    def _buffer(size, dtype):
        return torch.empty(size, dtype=dtype)

    def _copied(self, slot):
        slot.done = _Event()
        self.events.append(slot.done)


def test_each_size_has_a_ring_whose_buffers_are_written_again_once_their_copy_is_done():
    rings = _Rings()
    out = torch.zeros(100, dtype=torch.long)
    for i in range(staging.SLOTS):
        rings.to_device(array("q", range(i, i + 100)), torch.long, out)  # 100 longs: the 128 ring
        assert out.tolist() == list(range(i, i + 100))
    assert rings.buffers == staging.SLOTS
    rings.events[0].finished = True
    rings.to_device(array("q", range(70)), torch.long, out)  # the first buffer again: its copy is done
    assert out[:70].tolist() == list(range(70)) and rings.buffers == staging.SLOTS
    # The next one's copy is still queued: a new buffer, no wait; the ring is one longer from now on.
    rings.to_device(array("q", range(90)), torch.long, out)
    assert rings.buffers == staging.SLOTS + 1
    rings.to_device(array("i", [1, 2, 3]), torch.int32, torch.zeros(3, dtype=torch.int32))  # a ring of its own
    assert rings.buffers == 2 * staging.SLOTS + 1


def test_answers_come_back_through_a_buffer_that_stays_until_the_ring_comes_round():
    rings = _Rings()
    first, copied = rings.from_device(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert copied is rings.events[0]  # the copy's own event: the caller waits for it before reading
    later = [rings.from_device(torch.full((2, 2), float(i)))[0] for i in range(staging.SLOTS - 1)]
    assert first.tolist() == [[1.0, 2.0], [3.0, 4.0]] and all(t.shape == (2, 2) for t in later)
    for event in rings.events:
        event.finished = True
    rings.from_device(torch.zeros(2, 2))  # the ring comes round: the first one's buffer is written
    assert first.tolist() == [[0.0, 0.0], [0.0, 0.0]] and rings.buffers == staging.SLOTS


def test_without_a_gpu_values_are_copied_as_they_are():
    plain = Staging(torch.device("cpu"))
    out = torch.zeros(4, dtype=torch.long)
    plain.to_device(array("q", [5, 6]), torch.long, out)
    assert out.tolist() == [5, 6, 0, 0] and plain.buffers == 0
    values = torch.ones(3)
    host, event = plain.from_device(values)
    assert event is None and host.tolist() == [1.0, 1.0, 1.0]
    values.zero_()  # a copy: what the device side does next does not reach it (a decode step's next choices)
    assert host.tolist() == [1.0, 1.0, 1.0]


def test_longs_go_in_one_copy_as_views_of_one_tensor():
    """Staging.longs: arrays of longs, one tensor on the device, a view for each part."""
    a, b = array("q", [3, 1, 4]), array("q", [1, 5, 9, 2])
    first, second, empty = Staging(torch.device("cpu")).longs(a, b, array("q"))
    assert first.tolist() == [3, 1, 4] and second.view(2, 2).tolist() == [[1, 5], [9, 2]] and empty.numel() == 0
    assert second.data_ptr() == first.data_ptr() + 3 * 8  # one tensor
