"""What benchmarks/helm_speed.py reads back from an evaluation's folder."""

from __future__ import annotations

import json

import pytest

from benchmarks.helm_speed import server_startup


def test_the_server_startup_is_the_latest_servers(tmp_path):
    """A mode run twice in one invocation shares its folder, and server.log is appended to."""
    log = tmp_path / "server.log"
    lines = [json.dumps({"status": "ready", "startup": {"load_s": s, "warm_up_s": 0.5}}) for s in (3.2, 1.7)]
    log.write_text("loading\n" + lines[0] + "\nstopping\nloading\n" + lines[1] + "\n")
    assert server_startup(log) == {"load_s": 1.7, "warm_up_s": 0.5}
    assert server_startup(tmp_path / "missing.log") is None


def test_the_decode_benchmark_holds_one_static_cache_at_a_time(tiny_llama_dir, monkeypatch):
    """Each decode mode has its own generator: holding every one's static buffers at once ran a 6.7 B
    model out of its 24 GB budget on the H200 (session 9)."""
    from benchmarks.helm_speed import child_decode_bench
    from evaluation.engine.server import static_decode

    decoders, held = [], []
    start = static_decode.StaticDecoder.start

    def counting(self, *args, **kwargs):
        if self not in decoders:
            decoders.append(self)
        held.append(sum(d.buffers is not None for d in decoders if d is not self))
        return start(self, *args, **kwargs)

    monkeypatch.setattr(static_decode.StaticDecoder, "start", counting)
    monkeypatch.setattr("benchmarks.helm_speed.fp32_equality", lambda device: {})
    result = child_decode_bench(str(tiny_llama_dir), 2, 4, 24)
    assert len(decoders) >= 2 and held and max(held) == 0
    assert result["static_again"]["steps"] == 3


def test_the_table_shows_the_servers_batches_graphs_and_latency():
    from benchmarks.helm_speed import render

    stats = {"busy_seconds": 2.27, "batches": 125, "mean_batch_rows": 24.0, "packed_graph_batches": 120,
             "packed_graph_captures": 3, "latency_seconds": {"mean": 0.0541}}  # fmt: skip
    rows = [
        {"model": "1b", "suite": "prefill-mc", "mode": "warm", "budget": 24, "wall_s": 9.1, "server_stats": stats},
        {"model": "1b", "suite": "prefill-mc", "mode": "A", "budget": None, "wall_s": 184.9},
    ]
    header, rule, warm, a = render({"rows": rows}).splitlines()
    assert header.count("|") == rule.count("|") == warm.count("|") == a.count("|")
    assert warm.endswith("| 2.27 | 125 × 24 | 120 / 3 | 0.054 |  |")


def test_the_decode_steps_bandwidth_share_leaves_out_the_first_rows_and_the_joins():
    from benchmarks.helm_speed import efficiency, render

    stats = {"busy_seconds": 2.0, "decode_steps": 100, "decode_seconds": 1.5, "decode_start_seconds": 0.2,
             "decode_join_seconds": 0.3, "decode_prefill_seconds": 0.25, "decode": {"graph_capture_seconds": 0.08},
             "decode_joins": 3}  # fmt: skip
    row = {"wall_s": 5.0, "helm_s": 4.0, "server_stats": stats}
    counts = {"prompt_tokens": 1000, "output_tokens": 100, "kv_token_reads": 0}
    ceilings = {"bf16_matmul_tflops": 1.0, "copy_bandwidth_tb_s": 1.0}
    eff = efficiency(row, counts, ceilings, 10**9, 10**10, 0, "decode")  # 100 steps × 10 GB = 1 TB moved
    assert eff["bandwidth_share"] == pytest.approx(1 / 2.0) and eff["steps_s"] == pytest.approx(1.0)
    assert eff["bandwidth_share_steps"] == pytest.approx(1.0)
    table = render({"rows": [{"model": "7b", "suite": "generation", "mode": "warm", "budget": 24, **row,
                              "efficiency": eff}]})  # fmt: skip
    assert "| 50.0% (steps 100.0%) |" in table
    assert table.endswith("| 0.25 / 0.20 / 0.30 (3) / 0.08 |")


def test_a_run_whose_warm_up_turned_rope_attend_off_says_so():
    """The decode column tells a run measured with the separate rotary and attention kernels (the
    server's warm-up check turned the fused one off) from one measured with it."""
    from benchmarks.helm_speed import server_columns

    stats = {"busy_seconds": 1.0, "decode_seconds": 0.8, "decode_prefill_seconds": 0.1, "decode_start_seconds": 0.05,
             "decode_join_seconds": 0.04, "decode_joins": 2, "decode": {"graph_capture_seconds": 0.03}}  # fmt: skip
    assert server_columns(stats).endswith("| 0.10 / 0.05 / 0.04 (2) / 0.03")
    stats["decode"]["rope_attend"] = True
    assert server_columns(stats).endswith("| 0.10 / 0.05 / 0.04 (2) / 0.03")
    stats["decode"]["rope_attend"] = False
    assert server_columns(stats).endswith("| 0.10 / 0.05 / 0.04 (2) / 0.03 (rope_attend off)")
    stats["decode"] |= {"rope_attend": True, "folded_norms": True}
    assert server_columns(stats).endswith("| 0.10 / 0.05 / 0.04 (2) / 0.03")
    stats["decode"]["folded_norms"] = False  # ENGINE_FOLD_NORMS=0: the steps ran their norm kernels
    assert server_columns(stats).endswith("| 0.10 / 0.05 / 0.04 (2) / 0.03 (norms kept)")


def test_a_decode_step_reads_every_weight_but_the_input_embedding_table(tiny_llama_dir, llama, tmp_path):
    """The bandwidth shares count the bytes a step reads: the input embedding is read a row a sequence,
    not whole (sessions 9-17 counted it whole), unless it is also the head."""
    import shutil

    from benchmarks.helm_speed import model_shape

    model = llama.model
    elem = next(model.parameters()).element_size()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert "32" in str(config.get("dtype") or config.get("torch_dtype")) and elem == 4
    embed = model.get_input_embeddings().weight
    read = sum(p.numel() for p in model.parameters() if p is not embed) * elem
    params, step_bytes, _ = model_shape(tiny_llama_dir)
    assert params == sum(p.numel() for p in model.parameters())
    assert step_bytes == read < params * elem

    tied = tmp_path / "tied"
    shutil.copytree(tiny_llama_dir, tied)
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    assert model_shape(tied)[1] == model_shape(tied)[0] * elem
