"""A static decode step's work outside its layers (decode_step.py): the rotary table gives the module's
own values, steps read it instead of calling the module, the mask's bias is built only where a layer
attends through the mask, and decoding stays `generate`'s. The greedy kernel itself is checked under
Triton's interpreter (test_fused.test_kernels_under_tritons_interpreter) and compiled for a GPU there."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from evaluation.engine.server import decode_attention, decode_step, static_decode
from evaluation.engine.server.generation import BatchGenerator
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_like_generate, rows_for
from tests.engine.test_joining import Arrivals

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


def _rotary(scaling: dict | None) -> LlamaRotaryEmbedding:
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=512, rope_scaling=scaling)
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("scaling", [None, LLAMA3, {"rope_type": "linear", "factor": 2.0}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tables_rows_are_the_modules_values_at_each_position(scaling, dtype):
    rotary = _rotary(scaling)
    table = decode_step.rotary_table(rotary, dtype, torch.device("cpu"), 300)
    assert table is not None and table.shape == (300, 128) and table.dtype == dtype
    # A step's positions, as the decoder asks the module for them: [rows, 1].
    positions = torch.tensor([[0], [1], [37], [126], [255], [299]])
    want_cos, want_sin = rotary(torch.empty(0, dtype=dtype), positions)
    now = torch.empty(6, 128, dtype=dtype)
    decode_step.rotary_rows(table, positions[:, 0], now)
    cos, sin = decode_step.cos_sin(now)
    assert cos.shape == want_cos.shape == (6, 1, 64)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_rope_types_that_follow_the_length_keep_the_module_and_the_setting_turns_the_table_off(monkeypatch):
    assert decode_step.rotary_table(_rotary({"rope_type": "dynamic", "factor": 2.0}), torch.float32,
                                    torch.device("cpu"), 64) is None  # fmt: skip
    monkeypatch.setattr(decode_step, "lean", False)
    assert decode_step.rotary_table(_rotary(None), torch.float32, torch.device("cpu"), 64) is None


def test_positions_past_the_table_read_its_last_row():
    table = torch.arange(8 * 4, dtype=torch.float32).view(8, 4)
    now = torch.empty(3, 4)
    decode_step.rotary_rows(table, torch.tensor([2, 7, 9]), now)
    assert torch.equal(now, table[[2, 7, 7]])


def _module_calls(model, monkeypatch) -> list[int]:
    """Rows of each call of the model's rotary module."""
    calls: list[int] = []
    rotary = model.model.rotary_emb
    forward = rotary.forward
    monkeypatch.setattr(
        rotary, "forward", lambda x, positions: calls.append(positions.shape[0]) or forward(x, positions)
    )
    return calls


def _bias_builds(monkeypatch) -> list[int]:
    built: list[int] = []
    call = static_decode._LazyBias.__call__

    def counted(self):
        if self.bias is None:
            built.append(1)
        return call(self)

    monkeypatch.setattr(static_decode._LazyBias, "__call__", counted)
    return built


@pytest.mark.parametrize("bounded", [True, False])
def test_steps_read_the_table_and_build_the_bias_only_through_the_mask(llama, monkeypatch, bounded):
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setattr(decode_attention, "everywhere", bounded)
    model, tokenizer = llama.model, llama.tokenizer
    generator = BatchGenerator(model, tokenizer, decode="static")
    calls, built = _module_calls(model, monkeypatch), _bias_builds(monkeypatch)
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    generator.generate(rows)
    steps = generator.last_decode_steps
    buffers = generator.static.buffers
    assert steps >= 9 and buffers.table is not None
    # The module: each prefill's forward and the one table of the batch's shape; no step calls it.
    assert calls.count(buffers.columns) == 1 and len(calls) <= 3, calls
    assert len(built) == (0 if bounded else steps), built
    assert_like_generate(model, tokenizer, rows)


def test_without_the_lean_step_the_module_and_the_bias_serve_every_step(llama, monkeypatch):
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setattr(decode_attention, "everywhere", True)
    model, tokenizer = llama.model, llama.tokenizer
    lean_rows = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=8)
    BatchGenerator(model, tokenizer, decode="static").generate(lean_rows)
    monkeypatch.setattr(decode_step, "lean", False)
    generator = BatchGenerator(model, tokenizer, decode="static")
    calls, built = _module_calls(model, monkeypatch), _bias_builds(monkeypatch)
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=8)
    generator.generate(rows)
    assert generator.static.buffers.table is None
    assert len(built) == generator.last_decode_steps and len(calls) >= generator.last_decode_steps
    # fp32: the table's values are the module's, so the two ways decode alike, logprobs included.
    assert [r.tokens for r in rows] == [r.tokens for r in lean_rows]
    assert [r.logprobs for r in rows] == [r.logprobs for r in lean_rows]


def test_rows_joining_and_a_grown_buffer_read_their_own_positions(llama, monkeypatch):
    """Joins write positions from the host, and a wider prompt grows the buffers (a new table): each
    refreshes the next step's cos and sin."""
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setattr(decode_attention, "everywhere", True)
    model, tokenizer = llama.model, llama.tokenizer
    generator = BatchGenerator(model, tokenizer, decode="static")
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=14)
    later = rows_for(tokenizer, PROMPTS[3:], max_new_tokens=9)
    assert max(len(r.prompt_ids) for r in later) > max(len(r.prompt_ids) for r in first) + 3
    arrivals = Arrivals({3: later[:1], 6: later[1:]})
    generator.generate(first, arrivals)
    assert not arrivals.declined and generator.static.buffers.table is not None
    assert generator.static.buffers.rows == 8  # grown from four
    assert_like_generate(model, tokenizer, first + later)


@pytest.mark.parametrize(
    ("setting", "block"), [("4096", 4096), ("32768", 32768), ("3000", 4096), ("x", 4096), ("65536", 4096)]
)
def test_the_greedy_block_setting_takes_powers_of_two_up_to_32768(setting, block, caplog):
    assert decode_step._greedy_block(setting) == block
    assert ("ENGINE_GREEDY_BLOCK" in caplog.text) == (setting not in ("4096", "32768"))


def test_a_row_in_several_parts_runs_the_kernel_only_with_buffers_that_hold_them():
    """The greedy kernel's parts meet in `greedy_parts`' buffers: where they are missing or of another
    shape, the step takes torch's operations rather than write outside them."""
    pytest.importorskip("triton")
    rows = 3
    assert decode_step._parts_fit(None, rows, 1000)  # one part of 4,096: nothing to meet in
    assert not decode_step._parts_fit(None, rows, 32000)
    eight = (torch.zeros(rows * 8 * 4, dtype=torch.float64), torch.zeros(rows, dtype=torch.int32))
    assert decode_step._parts_fit(eight, rows, 32000)
    assert not decode_step._parts_fit(eight, rows, 80000)  # 20 parts, padded to 32
    assert not decode_step._parts_fit(eight, rows + 1, 32000)
    assert decode_step.greedy_parts(rows, 32000, torch.device("cpu")) is None  # no kernel on this CPU
