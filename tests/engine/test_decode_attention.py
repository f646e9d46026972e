"""Static decode steps that attend over each row's filled columns (decode_attention.py): the bounds say
what the mask says, and decoding through them gives `generate`'s tokens (fp32 on the CPU through the
torch reference, fused layers on). The Triton kernel itself is checked against that reference under
Triton's interpreter (test_fused.test_kernels_under_tritons_interpreter) and compiled for a GPU there."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server import decode_attention
from evaluation.engine.server.generation import BatchGenerator
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_like_generate, rows_for
from tests.engine.test_joining import Arrivals


@pytest.fixture
def bounded(monkeypatch):
    """Fused layers, bounded attention on the CPU, and a count of the steps' attention calls by bounds."""
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setattr(decode_attention, "everywhere", True)
    calls = []
    reference = decode_attention.attend_torch

    def counted(*args, **kwargs):
        calls.append(args[3].shape[0])
        return reference(*args, **kwargs)

    monkeypatch.setattr(decode_attention, "attend_torch", counted)
    return calls


def _load(folder):
    from evaluation.engine.loading import load_model

    return load_model(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def grouped_dir(tmp_path_factory):
    from evaluation.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gqa-bounds"), "llama", seed=4, num_heads=8, num_kv_heads=2)


def test_bounds_describe_the_masks_a_prefill_builds():
    masks = torch.tensor([
        [0, 0, 1, 1, 0, 1, 1],  # a prefix right-aligned to the shared width, then a left-padded suffix
        [1, 1, 1, 1, 1, 1, 1],  # no padding
        [0, 0, 0, 0, 1, 1, 1],  # a left-padded prompt with no prefix
        [0, 1, 1, 0, 0, 0, 0],  # a prefix and an empty suffix: its own tokens start at the step's column
    ])  # fmt: skip
    bounds, fits = decode_attention.row_bounds(masks)
    assert fits
    assert bounds.tolist() == [[2, 4, 5], [0, 0, 0], [0, 0, 4], [1, 3, 7]]
    # At the last prompt column the bounds give the mask back; a step's column opens for every row.
    last = decode_attention.bounds_mask(bounds, torch.tensor([6]), 8)
    assert torch.equal(last[:, :7], masks.bool()) and not last[:, 7].any()
    step = decode_attention.bounds_mask(bounds, torch.tensor([7]), 8)
    assert step[:, 7].all()


def test_splits_aim_at_the_programs_per_sm_the_setting_asks(monkeypatch, caplog):
    """One program per SM by default (so a 50-row 1.1 B step runs one split a row and no merge kernel,
    a 32-row one two splits merged by a kernel of their own); `ENGINE_DECODE_WAVES=2` gives one split a
    row only once the rows fill the SMs twice; never more splits than blocks of columns or MAX_SPLITS;
    a setting that is not a number in range says so and keeps the default."""
    cpu = torch.device("cpu")  # counted as an H100's 132 SMs
    assert [decode_attention.splits_for(rows, 4, 1024, cpu) for rows in (2, 32, 33, 50)] == [16, 2, 1, 1]
    assert decode_attention.splits_for(2, 4, 130, cpu) == 3  # three blocks of 64 columns
    monkeypatch.setenv("ENGINE_DECODE_WAVES", "2")
    assert [decode_attention.splits_for(rows, 4, 1024, cpu) for rows in (1, 2, 33, 50, 66)] == [16, 16, 2, 2, 1]
    assert not caplog.text
    for bad in ("many", "0", "-1", "nan", "17"):
        monkeypatch.setenv("ENGINE_DECODE_WAVES", bad)
        assert decode_attention.splits_for(50, 4, 1024, cpu) == 1
        assert f"ENGINE_DECODE_WAVES={bad!r} is not a number in (0, 16]" in caplog.text


def test_a_mask_of_three_runs_does_not_fit():
    assert decode_attention.row_bounds(torch.tensor([[0, 1, 0, 1], [1, 0, 1, 1], [1, 0, 0, 1]]))[1]
    assert not decode_attention.row_bounds(torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1]]))[1]
    assert not decode_attention.row_bounds(torch.tensor([[1, 1, 0, 1, 0]]))[1]  # a gap at the end


def test_bounded_steps_equal_generate_with_padding_rows_and_shared_prefixes(tiny_llama_dir, bounded):
    llama = _load(tiny_llama_dir)
    model, tokenizer = llama.model, llama.tokenizer
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10) + rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=7)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows[:6])  # six rows in a bucket of eight
    generator.generate(rows[6:])  # a stored prefix, each row's suffix padded on the left
    assert generator.last_shared_prefix >= 16
    assert generator.static.buffers.cache.bounded
    # Every layer of every step attended by bounds.
    assert len(bounded) >= model.config.num_hidden_layers * (generator.last_decode_steps + 9)
    assert_like_generate(model, tokenizer, rows)


def test_joining_rows_and_the_running_rows_shifted_right_keep_their_bounds(tiny_llama_dir, bounded):
    llama = _load(tiny_llama_dir)
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=10)
    later = rows_for(tokenizer, PROMPTS[3:], max_new_tokens=12)  # wider: the running rows move right
    prefixed = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=6)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(first, Arrivals({2: later, 5: prefixed}))
    assert len(generator.last_joined) == len(later) + len(prefixed)
    assert generator.static.buffers.cache.bounded and bounded
    assert_like_generate(model, tokenizer, first + later + prefixed)


def test_grouped_query_model_attends_by_bounds(grouped_dir, bounded):
    loaded = _load(grouped_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS + PROMPTS[:2], max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows[:2], Arrivals({3: rows[2:]}))
    assert bounded
    assert_like_generate(model, tokenizer, rows)


def test_a_row_the_bounds_cannot_describe_attends_through_the_mask(tiny_llama_dir, bounded, monkeypatch):
    llama = _load(tiny_llama_dir)
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=8)
    later = rows_for(tokenizer, PROMPTS[3:5], max_new_tokens=8)
    real = decode_attention.row_bounds
    seen = []

    def second_does_not_fit(mask):
        bounds, fits = real(mask)
        seen.append(mask.shape)
        return bounds, fits and len(seen) == 1

    monkeypatch.setattr(decode_attention, "row_bounds", second_does_not_fit)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(first, Arrivals({2: later}))
    assert len(seen) == 2 and not generator.static.buffers.cache.bounded
    calls = len(bounded)
    assert calls  # steps before the join attended by bounds, the later ones through the mask
    assert_like_generate(model, tokenizer, first + later)
    # The next batch of the same shape attends by bounds again.
    monkeypatch.setattr(decode_attention, "row_bounds", real)
    again = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=8)
    generator.generate(again)
    assert generator.static.buffers.cache.bounded and len(bounded) > calls
    assert_like_generate(model, tokenizer, again)


def test_without_the_kernel_or_the_setting_the_mask_serves(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("ENGINE_FUSED", "1")
    llama = _load(tiny_llama_dir)
    rows = rows_for(llama.tokenizer, PROMPTS[:3], max_new_tokens=4)
    generator = BatchGenerator(llama.model, llama.tokenizer, decode="static")
    generator.prepare_graphs()  # the warm-up: no kernel to compile here
    generator.generate(rows)  # fp32 on the CPU: no kernel, and `everywhere` is off
    assert not generator.static.buffers.cache.bounded
    assert_like_generate(llama.model, llama.tokenizer, rows)


def test_the_servers_warm_up_steps_run_on_a_one_row_buffer(tiny_llama_dir, bounded):
    """`StaticDecoder.prepare` runs the first capture's warm-up steps at the server's warm-up: on a GPU
    on the capture stream (stood in for here: the steps run as they would there)."""
    from evaluation.engine.server.static_decode import StaticDecoder

    loaded = _load(tiny_llama_dir)
    generator = BatchGenerator(loaded.model, loaded.tokenizer, decode="static")
    decoder = StaticDecoder(loaded.model, use_graphs=True)  # no CUDA here: graphs only in name
    outputs = []

    def warm_up(forward, times=2):
        outputs.extend(forward() for _ in range(times))
        decoder.capturer.warmed = True

    decoder.capturer.warm_up = warm_up
    with generator._running():
        decoder.prepare()
        decoder.prepare()  # once is enough
    assert len(outputs) == 2 and len(bounded) == 2 * len(loaded.model.model.layers)  # by bounds
    assert all(o.shape == (1, loaded.model.config.vocab_size) and torch.isfinite(o).all() for o in outputs)
    assert decoder.buffers is None  # nothing kept


def test_the_warm_up_times_each_of_its_parts(tiny_llama_dir, bounded):
    """`prepare_graphs` records each part's seconds for the server's start-up line (`warm_up_parts`)."""
    loaded = _load(tiny_llama_dir)
    generator = BatchGenerator(loaded.model, loaded.tokenizer, decode="static")
    generator.prepare_graphs()
    assert set(generator.warm_up_seconds) == {"prefix_merge", "decode_kernels", "decode_steps", "decode_prefill"}
    assert all(s >= 0 for s in generator.warm_up_seconds.values())


def test_captures_after_the_warm_up_steps_skip_their_own(monkeypatch):
    from evaluation.engine.server.cuda_graphs import Capturer

    counts = []
    capturer = Capturer(shared_pool=False)
    monkeypatch.setattr(capturer, "_capture", lambda forward, count: counts.append(count) or ("graph", None))
    capturer.capture(lambda: None, warm_ups=2)
    assert counts == [2]  # the first capture warms up first
    fresh = Capturer(shared_pool=False)
    monkeypatch.setattr(fresh, "_capture", lambda forward, count: counts.append(count) or ("graph", None))
    fresh.warmed = True
    fresh.capture(lambda: None, warm_ups=2)
    assert counts == [2, 0]


def test_failed_warm_up_steps_leave_the_server_starting(tiny_llama_dir, caplog):
    from evaluation.engine.server.static_decode import StaticDecoder

    loaded = _load(tiny_llama_dir)
    decoder = StaticDecoder(loaded.model, use_graphs=True)

    def fails(forward, times=2):
        raise RuntimeError("no stream here")

    decoder.capturer.warm_up = fails
    decoder.prepare()
    assert not decoder.capturer.warmed and "decode warm-up steps failed" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_warm_up_check_passes_the_reference_rope_attend(monkeypatch, dtype):
    """With the torch reference standing in for the kernel (CPU), `rope_attend` agrees with rotating,
    storing and attending apart; the kernel itself is checked the same way under Triton's interpreter
    (test_fused) and on the GPU (benchmarks.fused_kernels: rope_attend_warm_up_check)."""
    monkeypatch.setattr(decode_attention, "everywhere", True)
    monkeypatch.setattr(decode_attention, "rope_inside", True)
    assert decode_attention.rope_attend_disagreement(8, 2, 32, dtype, torch.device("cpu")) is None
    # Folded norms: the rows' factors taken inside, against q, k and v scaled first.
    assert decode_attention.rope_attend_disagreement(8, 2, 32, dtype, torch.device("cpu"), scaled=True) is None
    assert decode_attention.verify_rope_attend(8, 2, 32, dtype, torch.device("cpu"), scaled=True)
    assert decode_attention.rope_inside


@pytest.mark.parametrize(
    "fault, why",
    [
        ("column", "the key or value written at the step's column differs"),
        ("output", "outputs differ by up to"),
        ("nan", "outputs not finite"),
        ("raises", "RuntimeError: no kernel for sm_00"),
    ],
)
def test_a_rope_attend_that_disagrees_is_turned_off_at_the_warm_up(monkeypatch, caplog, fault, why):
    """A fused kernel that writes the wrong column, computes other outputs or fails on this GPU never
    serves a step: the warm-up turns it off (the separate kernels serve, as `ENGINE_ROPE_ATTEND=0`) and
    says why."""
    monkeypatch.setattr(decode_attention, "everywhere", True)
    monkeypatch.setattr(decode_attention, "rope_inside", True)
    reference = decode_attention.rope_attend_torch

    def faulty(q, k, v, cos, sin, keys, values, bounds, column, scaling, scale_of=None):
        if fault == "raises":
            raise RuntimeError("no kernel for sm_00")
        out = reference(q, k, v, cos, sin, keys, values, bounds, column, scaling, scale_of)
        if fault == "column":
            keys[:, :, column + 1] = keys[:, :, column]
        elif fault == "output":
            out = out + 0.5
        elif fault == "nan":
            out[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(decode_attention, "rope_attend_torch", faulty)
    assert not decode_attention.verify_rope_attend(8, 2, 32, torch.float32, torch.device("cpu"))
    assert not decode_attention.rope_inside
    assert why in caplog.text and "rotate, store and attend in separate kernels" in caplog.text
    work = decode_attention.Workspace(1, 8, 2, 64, 32, torch.device("cpu"))
    assert decode_attention.rope_attend(torch.zeros(1, 1, 8 * 32), *([None] * 9), work) is None  # steps: apart


def test_stats_say_whether_the_steps_run_rope_attend(tiny_llama_dir, monkeypatch):
    from evaluation.engine.server import fused

    loaded = _load(tiny_llama_dir)
    assert decode_attention.rope_attend_state(loaded.model) is None  # CPU: no kernel at all
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setattr(fused, "_use_triton", lambda x: True)  # as on a GPU
    assert fused.install(loaded.model)
    monkeypatch.setattr(decode_attention, "rope_inside", True)
    assert decode_attention.rope_attend_state(loaded.model) is True
    monkeypatch.setattr(decode_attention, "rope_inside", False)  # the warm-up's check turned it off
    assert decode_attention.rope_attend_state(loaded.model) is False


@pytest.mark.parametrize("agrees", [True, False])
def test_prepare_checks_rope_attend_and_readies_attend_only_where_it_is_off(tiny_llama_dir, monkeypatch, agrees):
    """The warm-up's check runs both kernels the steps could run, so nothing more is compiled after it
    agrees; where it turned rope_attend off, `attend` is run both ways (one split, several)."""
    loaded = _load(tiny_llama_dir)
    monkeypatch.setattr(decode_attention, "kernel_runs", lambda model: True)  # as on a GPU
    monkeypatch.setattr(decode_attention, "everywhere", True)
    monkeypatch.setattr(decode_attention, "rope_inside", True)
    if not agrees:
        monkeypatch.setattr(decode_attention, "rope_attend_disagreement", lambda *a: "outputs differ by up to 1")
    splits = []
    reference = decode_attention.attend

    def counted(q, keys, values, bounds, column, scaling, work):
        splits.append(work.splits)
        return reference(q, keys, values, bounds, column, scaling, work)

    monkeypatch.setattr(decode_attention, "attend", counted)
    decode_attention.prepare(loaded.model)
    assert decode_attention.rope_inside is agrees
    assert splits == ([1, 3] if agrees else [1, 2])  # the check's comparisons, or the compile loop's


def test_the_warm_up_reads_the_bounds_of_its_prefills_masks(tiny_llama_dir, bounded, monkeypatch):
    """The first decoding batch's start spent 16 ms in `row_bounds` (its kernels' first launches), later
    batches 0.5 ms (session 21, an H100): the warm-up runs it on its prefills' left-padded masks."""
    loaded = _load(tiny_llama_dir)
    generator = BatchGenerator(loaded.model, loaded.tokenizer, decode="static")
    seen = []
    real = decode_attention.row_bounds
    monkeypatch.setattr(decode_attention, "row_bounds", lambda mask: seen.append(mask.shape) or real(mask))
    generator.warm_decode_prefill()
    assert seen == [(2, 8), (16, 48)]


@pytest.mark.parametrize(
    "runs",
    [
        [[(2, 5), (7, 10)], [(5, 5), (4, 10)], [(0, 3), (3, 10)], [(1, 4), (6, 9)], [(0, 0), (10, 10)]],
        [[(0, 10)], [(3, 3)], [(9, 10)], [(0, 1), (9, 10)]],
        [[(0, 2), (4, 6), (8, 10)]],  # three runs: does not fit
    ],
)
def test_bounds_from_column_ranges_are_row_bounds_of_their_mask(runs):
    width = 10
    mask = torch.zeros(len(runs), width, dtype=torch.long)
    for i, row in enumerate(runs):
        for a, b in row:
            mask[i, a:b] = 1
    flat, fits = decode_attention.runs_bounds(runs, width)
    expected, expected_fits = decode_attention.row_bounds(mask)
    assert torch.equal(torch.tensor(flat).view(len(runs), 3), expected) and fits == expected_fits


def test_the_kernels_launch_settings_come_from_the_environment(monkeypatch, caplog):
    """64 columns a block and Triton's defaults unless set; a value out of range is logged and left out."""
    for name in ("ENGINE_ATTEND_BLOCK", "ENGINE_ATTEND_WARPS", "ENGINE_ATTEND_STAGES"):
        monkeypatch.delenv(name, raising=False)
    assert decode_attention._launch_settings() == (64, {})
    monkeypatch.setenv("ENGINE_ATTEND_BLOCK", "128")
    monkeypatch.setenv("ENGINE_ATTEND_WARPS", "8")
    monkeypatch.setenv("ENGINE_ATTEND_STAGES", "2")
    assert decode_attention._launch_settings() == (128, {"num_warps": 8, "num_stages": 2})
    assert not caplog.text
    monkeypatch.setenv("ENGINE_ATTEND_BLOCK", "100")
    monkeypatch.setenv("ENGINE_ATTEND_WARPS", "many")
    assert decode_attention._launch_settings() == (64, {"num_stages": 2})
    assert "ENGINE_ATTEND_BLOCK='100' is not one of 16, 32, 64, 128, 256" in caplog.text
    assert "ENGINE_ATTEND_WARPS='many' is not one of" in caplog.text
