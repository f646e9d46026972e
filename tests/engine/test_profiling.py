"""ENGINE_PROFILE_DIR: the model thread times a window of batches, alone and under load, and profiles them."""

from __future__ import annotations

import json

from evaluation.engine.server.batching import Limits, Scheduler
from evaluation.engine.server.generation import BatchGenerator
from evaluation.engine.server.stats import Stats
from tests.engine.reference import PROMPTS, assert_like_generate, rows_for


def test_a_window_of_batches_is_timed_twice_and_profiled_without_changing_results(
    tiny_llama_dir, tmp_path, monkeypatch
):
    from evaluation.engine.loading import load_model

    loaded = load_model(tiny_llama_dir, device="cpu", dtype="float32")
    monkeypatch.setenv("ENGINE_PROFILE_DIR", str(tmp_path / "profile"))
    monkeypatch.setenv("ENGINE_PROFILE_START", "1")
    monkeypatch.setenv("ENGINE_PROFILE_COUNT", "2")
    scheduler = Scheduler(BatchGenerator(loaded.model, loaded.tokenizer), Stats(), Limits())
    batches = [rows_for(loaded.tokenizer, PROMPTS[i : i + 2], max_new_tokens=3) for i in range(0, 6, 2)]
    for rows in batches:
        scheduler.run(rows)
    window = json.loads((tmp_path / "profile" / "batches.json").read_text())
    assert [entry["rows"] for entry in window] == [2, 2]
    assert all(entry["seconds_under_load"] > 0 and entry["seconds_alone"] > 0 for entry in window)
    assert "aten::" in (tmp_path / "profile" / "profile.txt").read_text()
    assert "traceEvents" in (tmp_path / "profile" / "trace.json").read_text()
    assert_like_generate(loaded.model, loaded.tokenizer, [r for rows in batches for r in rows])


def test_without_the_variable_nothing_is_profiled(tiny_llama_dir, monkeypatch):
    from evaluation.engine.loading import load_model

    monkeypatch.delenv("ENGINE_PROFILE_DIR", raising=False)
    loaded = load_model(tiny_llama_dir, device="cpu", dtype="float32")
    assert Scheduler(BatchGenerator(loaded.model, loaded.tokenizer), Stats(), Limits()).profiler is None
