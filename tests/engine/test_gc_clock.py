"""The model process's garbage-collection clock (gc_clock.py)."""

from __future__ import annotations

import gc

from evaluation.engine.server.gc_clock import GcClock


def test_the_clock_counts_each_generations_collections_and_the_longest():
    clock = GcClock().start()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        clock.stop()
    snapshot = clock.snapshot()
    assert snapshot["collections"][0] >= 1 and snapshot["collections"][2] >= 2
    assert 0 < snapshot["longest_seconds"] <= sum(snapshot["seconds"])
    gc.collect()
    assert clock.snapshot() == snapshot and clock not in gc.callbacks  # stopped: nothing more counted
