"""Fused decoder layers (fused.py): installed only where asked, the same weights in the same memory,
and every engine path through them agrees with Hugging Face's `generate` (fp32, on the CPU with the
torch operations). The Triton kernels themselves run under Triton's interpreter in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.engine.server import fused
from evaluation.engine.server.generation import BatchGenerator
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, STORE_BYTES, assert_like_generate, rows_for

ROOT = Path(__file__).resolve().parents[2]


def _load(folder):
    from evaluation.engine.loading import load_model

    return load_model(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def grouped_dir(tmp_path_factory):
    from evaluation.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gqa-fused"), "llama", seed=3, num_kv_heads=2)


@pytest.fixture
def fused_on(monkeypatch):
    monkeypatch.setenv("ENGINE_FUSED", "1")


@pytest.fixture
def counted(monkeypatch):
    """How many decoder-layer forwards went through the fused code."""
    calls = []
    forward = fused.fused_forward
    monkeypatch.setattr(fused, "fused_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_installed_only_where_asked(tiny_llama_dir, tiny_gpt2_dir, monkeypatch):
    llama = _load(tiny_llama_dir)
    monkeypatch.delenv("ENGINE_FUSED", raising=False)
    assert not fused.enabled(llama.model)  # auto: fp32 on a CPU keeps Hugging Face's layers
    assert BatchGenerator(llama.model, llama.tokenizer).fused is False
    monkeypatch.setenv("ENGINE_FUSED", "0")
    assert not fused.enabled(llama.model)
    monkeypatch.setenv("ENGINE_FUSED", "1")
    assert fused.enabled(llama.model)
    assert not fused.enabled(_load(tiny_gpt2_dir).model)
    llama.model.config.sliding_window, llama.model.config.use_sliding_window = 16, True
    assert not fused.enabled(llama.model)


def test_layers_unlike_llamas_keep_hugging_faces(fused_on):
    from transformers import AutoModelForCausalLM, LlamaConfig

    def tiny(**changes):
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                             num_attention_heads=2, **changes)  # fmt: skip
        return AutoModelForCausalLM.from_config(config)

    assert fused.enabled(tiny())
    assert not fused.enabled(tiny(hidden_act="gelu"))  # the kernel computes SiLU only
    odd = tiny()
    odd.model.layers[0].self_attn.q_norm = torch.nn.Identity()  # Qwen3-like query norms
    assert not fused.install(odd) and not hasattr(odd, "_engine_fused")


def _storage_bytes(model) -> int:
    storages = {v.untyped_storage().data_ptr(): v.untyped_storage() for v in model.state_dict().values()}
    return sum(s.nbytes() for s in storages.values())


def test_weights_keep_their_values_and_joined_projections_share_one_tensor(tiny_llama_dir, fused_on):
    model = _load(tiny_llama_dir).model
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    storage = _storage_bytes(model)
    assert fused.install(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(after[k], value) for k, (_, value) in before.items())
    joined = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    moved = {k for k in before if k.split(".")[-2] in joined}
    assert moved and all(after[k].data_ptr() == ptr for k, (ptr, _) in before.items() if k not in moved)
    for layer in model.model.layers:
        qkv, gate_up = layer.self_attn._engine_joined, layer.mlp._engine_joined
        for module, part in zip((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                                qkv.weight.split(qkv.sizes), strict=True):  # fmt: skip
            assert module.weight.data_ptr() == part.data_ptr() and module.weight.is_contiguous()
        assert layer.mlp.up_proj.weight.data_ptr() == gate_up.weight.split(gate_up.sizes)[1].data_ptr()
    # No memory added: the joined tensors replace the separate ones.
    assert _storage_bytes(model) == storage
    pointers = {k: v.data_ptr() for k, v in after.items()}
    assert fused.install(model) and {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers


def test_decode_steps_use_the_joined_products_and_prefills_the_modules(tiny_llama_dir, fused_on, monkeypatch):
    model = _load(tiny_llama_dir).model
    assert fused.install(model)
    calls = []
    for name in ("q_proj", "gate_proj"):
        module = getattr(model.model.layers[0].self_attn if name == "q_proj" else model.model.layers[0].mlp, name)
        monkeypatch.setattr(module, "forward", lambda x, _f=module.forward, _n=name: calls.append(_n) or _f(x))
    with torch.inference_mode(), fused.active(model):
        model(torch.tensor([[5, 9, 33, 2]]))
        assert calls == ["q_proj", "gate_proj"]
        calls.clear()
        model(torch.tensor([[5], [9]]))  # one token a row: a decode step's shape
        assert calls == []
        monkeypatch.setattr(fused, "joined_decode", False)
        model(torch.tensor([[5], [9]]))
        assert calls == ["q_proj", "gate_proj"]


def test_static_decode_steps_leave_each_residual_sum_to_the_next_norm(tiny_llama_dir, fused_on, monkeypatch):
    """A fused static decode step makes each layer's residual sum in the next layer's input norm (the
    last one's in the final norm), not as an add of its own; the tokens stay generate's."""
    loaded = _load(tiny_llama_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, decode="static")
    assert generator.fused
    pending, finals = [], []
    parts, final = fused.layer_parts, fused.final_norm
    monkeypatch.setattr(
        fused, "layer_parts", lambda layer, h, p, *a, **k: pending.append(p is not None) or parts(layer, h, p, *a, **k)
    )
    monkeypatch.setattr(fused, "final_norm", lambda *a: finals.append(1) or final(*a))
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=6)
    generator.generate(rows)
    layers = len(model.model.layers)
    assert generator.last_decode_steps == 5 and len(finals) == 5
    # The prefill's layers make their own sums (fused_forward), then each step defers them.
    assert pending == [False] * layers + [False, *[True] * (layers - 1)] * 5
    assert_like_generate(model, tokenizer, rows)


def test_projections_that_cannot_be_joined_stay_apart(tiny_llama_dir, fused_on):
    model = _load(tiny_llama_dir).model
    attn = model.model.layers[0].self_attn
    attn.k_proj.weight.data = attn.k_proj.weight.data.double()
    assert not fused.Joined.possible([attn.q_proj, attn.k_proj, attn.v_proj])
    attn.k_proj.weight.data = attn.k_proj.weight.data.float()
    attn.v_proj.bias = torch.nn.Parameter(torch.zeros(attn.v_proj.out_features))
    assert not fused.Joined.possible([attn.q_proj, attn.k_proj, attn.v_proj])
    assert fused.install(model) and not hasattr(attn, "_engine_joined")
    assert hasattr(model.model.layers[0].mlp, "_engine_joined")


def test_weights_sharing_one_buffer_are_not_joined(tiny_llama_dir, fused_on):
    """Re-laid, such weights would leave their buffer alive: the joined copy would add memory."""
    model = _load(tiny_llama_dir).model
    mlp = model.model.layers[0].mlp
    flat = torch.cat([mlp.gate_proj.weight.detach().flatten(), mlp.up_proj.weight.detach().flatten()])
    mlp.gate_proj.weight.data = flat[: mlp.gate_proj.weight.numel()].view_as(mlp.gate_proj.weight)
    mlp.up_proj.weight.data = flat[mlp.gate_proj.weight.numel() :].view_as(mlp.up_proj.weight)
    assert not fused.Joined.possible([mlp.gate_proj, mlp.up_proj])
    assert fused.install(model) and not hasattr(mlp, "_engine_joined")
    assert hasattr(model.model.layers[0].self_attn, "_engine_joined")


def test_outside_the_engine_the_layers_are_hugging_faces(tiny_llama_dir, fused_on, counted):
    model = _load(tiny_llama_dir).model
    ids = torch.tensor([[5, 9, 33, 2, 17]])
    with torch.inference_mode():
        plain = model(ids).logits
        fused.install(model)
        assert torch.equal(model(ids).logits, plain) and counted == []
        with fused.active(model):
            close = model(ids).logits
    assert len(counted) == len(model.model.layers)
    torch.testing.assert_close(close, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts", [PROMPTS, FEW_SHOT_PROMPTS], ids=["mixed-lengths", "shared-prefix"])
@pytest.mark.parametrize("decode", ["static", "dynamic"])
@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "grouped_dir"])
def test_every_path_through_fused_layers_equals_generate(request, model_dir, decode, prompts, fused_on, counted):
    loaded = _load(request.getfixturevalue(model_dir))
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, decode=decode, prefix_store_bytes=STORE_BYTES)
    assert generator.fused
    decoding = rows_for(tokenizer, prompts, max_new_tokens=10)
    generator.generate(decoding)
    assert generator.last_decode_steps >= 9
    single = rows_for(tokenizer, prompts, max_new_tokens=1)  # single-token rows: packed where it can
    generator.generate(single)
    assert counted
    assert_like_generate(model, tokenizer, decoding + single)


def test_qwen2_with_biases_equals_hugging_face(tmp_path, fused_on):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    ids = torch.randint(0, 300, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.inference_mode():
        plain = model(ids, attention_mask=mask).logits
        assert fused.install(model)
        with fused.active(model):
            close = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(close, plain, atol=1e-5, rtol=1e-5)


def test_kernels_under_tritons_interpreter():
    """Each Triton kernel against its torch operations in fp16 (Triton's interpreter rounds bf16
    toward zero, unlike the GPU: bf16 is checked on the GPU by the same command). Rotary embeddings
    and residual sums are exact; a norm's fp32 sum and SiLU's exp may flip the rounding of an odd
    element."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fused_kernels", "--check-only", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = report["checks"]
    assert {c["op"] for c in checks} >= {"rms_norm", "add_rms_norm", "silu_mul", "rope_q", "rope_k", "merge",
                                         "silu_mul_joined", "rope_q_joined", "rope_k_joined", "rope_store_q",
                                         "rope_store_k_cache", "rope_store_v_cache", "decode_attention",
                                         "rope_attend", "rope_attend_k_cache", "rope_attend_v_cache",
                                         "greedy_tail"}  # fmt: skip
    assert all(c["triton"] for c in checks), checks
    # The decode step's last kernel: torch's choices (the first of equal values), the logprob within fp32
    # ulps of log-softmax's, the fp32 logits and the next step's inputs exact, a row with inf flagged.
    tails = [c for c in checks if c["op"] == "greedy_tail"]
    # A program a block of a row: 1,000 logits in one part and 32,000 in 8 of 4,096 (the default); 40,000
    # in 5 of 8,192 (padded to 8; the ties in parts 0 and 4); 32,000 in one of 32,768, 40,000 in two.
    assert [(c["vocab"], c["block"], c["parts"]) for c in tails] == [
        (1000, 1024, 1),
        (32000, 4096, 8),
        (40000, 8192, 5),
        (32000, 32768, 1),
        (40000, 32768, 2),
    ] * (len(tails) // 5), tails
    for c in tails:
        assert c["tokens_equal"] == c["finite_rows"] == 5 and c["ties_first"] == [7, 5], c
        # Logprobs of magnitude up to ~40, where an fp32 ulp is 3.8e-6: a sum of 32,000 exponentials in
        # another order is a few ulps off (1.08e-5 on the CPU box of session 31, so 1e-5 was too tight).
        assert c["logits_unequal"] == 0 and c["rotary_unequal"] == 0 and c["logprob_max_diff"] < 4e-5, c
        assert c["finite_equal"] and c["next_tokens_equal"] and c["positions_equal"] and c["column"] == 13, c
    # The decode attention sums in another order than SDPA and never reads a column outside the bounds
    # (they hold NaN): a few units of fp16's last place, with one split a row and with several.
    attention = [c for c in checks if c["op"] == "decode_attention"]
    assert {c["splits"] == 1 for c in attention} == {True, False}, attention
    assert all(c["finite"] and c["max_abs_diff"] < 2e-3 for c in attention), attention
    # Several splits: the last to finish merges them (no merge kernel), or the merge kernel does
    # (ENGINE_ATTEND_MERGE=0); the same sums in another order; each count of finished splits reset.
    merges = [c for c in checks if c["op"] == "decode_attention_merge"]
    several = sum(c["splits"] > 1 for c in attention)
    assert [(c["inside"], c["merge_kernels"]) for c in merges] == [(True, 0), (False, 1)] * several, merges
    assert all(c["max_abs_diff"] < 1e-3 and c["counts_zero"] for c in merges), merges
    # Each block's keys and values loaded in its own iteration (ENGINE_ATTEND_AHEAD=0): the same values.
    in_loop = [c for c in checks if c["op"] == "decode_attention_loads_in_loop"]
    assert len(in_loop) == len(attention) and all(c["unequal"] == 0 for c in in_loop), in_loop
    # With the step's rotary embedding in the kernel (inputs four times larger: values up to ~8, where
    # fp16's last place is 0.004): the key and value it writes are exactly the rotary kernel's.
    fused_rope = [c for c in checks if c["op"] == "rope_attend"]
    assert {c["splits"] == 1 for c in fused_rope} == {True, False}, fused_rope
    assert all(c["finite"] and c["max_abs_diff"] <= 1e-2 for c in fused_rope), fused_rope
    # The server's warm-up compares the fused kernel with the two it replaces before any step runs.
    warm_up = [c for c in checks if c["op"] == "rope_attend_warm_up_check"]
    assert len(warm_up) == len(fused_rope) and all(c["agrees"] for c in warm_up), warm_up
    # Folded norms (folded.py): the kernel scales q, k and v by the row's factor first; the key and value
    # it writes are exactly the reference's, the outputs as close as rope_attend's.
    folded = [c for c in checks if c["op"] == "rope_attend_folded"]
    assert len(folded) == len(fused_rope) and all(c["finite"] and c["max_abs_diff"] <= 1e-2 for c in folded), folded
    assert {c["op"] for c in checks} >= {"silu_mul_folded", "rope_attend_folded_k_cache", "rope_attend_folded_v_cache"}
    half = [c for c in checks if c["dtype"] == "float16" and c["op"] not in ("decode_attention", "rope_attend",
                                                                            "rope_attend_warm_up_check", "greedy_tail",
                                                                            "rope_attend_folded")]  # fmt: skip
    assert all(c["unequal"] == 0 for c in half if c["op"].startswith(("rope", "residual"))), checks
    assert all(c["unequal"] <= c["elements"] // 500 for c in half), checks
    layer = report["model"]["float16"]
    assert layer["fused_layers_called"] > 0 and layer["argmax_equal"] >= 0.95 * layer["positions"], layer
    # Static decode steps through the kernels (keys rotated into the cache, residual sums deferred).
    steps = layer["static_decode"]
    assert steps["cache_writes_fused"] == 2 * 5 and steps["argmax_equal"] == steps["positions"], steps


def _ptx(kernel, signature: dict, consts: dict, aligned: list[int] = (), options: dict | None = None) -> str:
    """`kernel` compiled for an H100/H200 (sm90) on this machine, no GPU needed. `aligned`: the
    arguments (by position) known divisible by 16, as Triton's launches specialize them."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    source = ASTSource(fn=kernel, signature=signature | dict.fromkeys(consts, "constexpr"), constexprs=consts,
                       attrs=attrs)  # fmt: skip
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    except (ImportError, FileNotFoundError) as e:  # pragma: no cover - a Triton build without its CUDA tool chain
        pytest.skip(f"cannot compile for CUDA here: {e}")


def test_the_warm_up_readies_the_prefix_merge_at_the_models_shapes(tiny_llama_dir, fused_on, monkeypatch):
    """The warm-up's one-token forward has no prefix: `prepare_graphs` runs the prefix merge once at
    the model's heads and head size, in flash's log-sum-exp layout, so no batch compiles it."""
    from evaluation.engine.server.attention import attention_shape

    loaded = _load(tiny_llama_dir)
    merges = []
    monkeypatch.setattr(fused, "merge_into", lambda own, own_lse, pre, pre_lse: merges.append((own, own_lse)))
    assert not fused.prepare_merge(loaded.model)  # not installed: nothing to ready
    assert fused.install(loaded.model)
    assert not fused.prepare_merge(loaded.model) and not merges  # the CPU: torch's operations, nothing to compile
    monkeypatch.setattr(fused, "_use_triton", lambda x: True)  # as on a GPU
    generator = BatchGenerator(loaded.model, loaded.tokenizer)
    generator.prepare_graphs()
    heads, _, dim = attention_shape(loaded.model.config)
    [(own, lse)] = merges
    assert own.shape == (2, heads, dim) and lse.shape == (2, heads) and lse.stride() == (1, 2)


def _specialization(kernel, **args) -> list:
    """What Triton compiles `kernel` for with these arguments (one kernel per distinct list)."""
    pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    bind = create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32)))
    return bind(**args)[1]


def test_the_kernels_the_warm_up_compiles_serve_every_prompt_length():
    """Triton compiles a kernel for each specialization of its int arguments (equal to 1, divisible by
    16, other). The server's warm-up runs a one-token forward: the rotary kernel it compiles must be
    the one a prefill of any length runs, or a new machine's first evaluation compiles inside its
    batches (session 15: the first prefill 0.16 s against 0.08 s once Triton's cache held it); the
    prefix merge's, whose log-sum-exp strides are a batch's token counts, likewise for any batch."""
    t = torch.zeros(64, dtype=torch.bfloat16)
    lse = torch.zeros(64, dtype=torch.float32)

    def rope(length: int) -> list:
        pointers = dict.fromkeys(("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "v_ptr", "kc_ptr", "vc_ptr", "col_ptr"), t)
        ints = {"cos_batch": 64 * length, "cos_token": 64, "q_token": 2048, "k_token": 256, "v_token": 256,
                "c_row": 0, "c_head": 0}  # fmt: skip
        consts = {"HEADS": 32, "KV_HEADS": 4, "HALF": 32, "BLOCK_H": 32, "STORE": False, "EXACT": True}
        return _specialization(fused._rope_kernel, **pointers, **ints, **consts, length=length)

    def merge(tokens: int, queries: int) -> list:
        out = {"own_ptr": t, "own_lse_ptr": lse, "pre_ptr": t, "pre_lse_ptr": lse, "heads": 32, "o_row": 2048,
               "o_head": 64, "l_row": 1, "l_head": tokens, "p_row": 2048, "p_head": 64, "q_row": 1,
               "q_head": queries}  # fmt: skip
        return _specialization(fused._merge_kernel, **out, DIM=64, BLOCK_H=32, EXACT=True)

    assert rope(1) == rope(16) == rope(126)
    assert merge(1, 1) == merge(256, 16) == merge(300, 126)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_rotary_kernel_keeps_each_products_rounding_when_compiled_for_a_gpu(dtype):
    """Compiled for the GPU, the rotary kernel multiplies in fp32 and rounds each product before
    the sum, as torch does. Written plainly, LLVM turned the rounded products into half-precision
    multiplies that NVPTX fused with the sum (`fma.rn.bf16`): on the GPU 12 % of rotated elements
    then differed from Hugging Face's by one unit in the last place."""
    ptx = _ptx(fused._rope_kernel, *_rope_signature(dtype, store=False))
    assert "fma" not in ptx
    assert "mul.rn.f32" in ptx


def _rope_signature(dtype: str, store: bool) -> tuple[dict, dict]:
    pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "cos_ptr", "sin_ptr", "v_ptr", "kc_ptr", "vc_ptr")}
    pointers["col_ptr"] = "*i64"
    ints = dict.fromkeys(
        ("length", "cos_batch", "cos_token", "q_token", "k_token", "v_token", "c_row", "c_head"), "i32"
    )
    consts = {"HEADS": 32, "KV_HEADS": 4, "HALF": 32, "BLOCK_H": 32, "STORE": store, "EXACT": True}
    return pointers | ints, consts


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_rotary_cache_write_kernel_keeps_each_products_rounding_when_compiled_for_a_gpu(dtype):
    ptx = _ptx(fused._rope_kernel, *_rope_signature(dtype, store=True))
    assert "fma" not in ptx
    assert "mul.rn.f32" in ptx


def _merge_signature():
    lse = {f"{part}_{dim}": "i32" for part in "olpq" for dim in ("row", "head")}
    return {
        "own_ptr": "*bf16",
        "own_lse_ptr": "*fp32",
        "pre_ptr": "*bf16",
        "pre_lse_ptr": "*fp32",
        "heads": "i32",
    } | lse


def _silu_signature():
    pointers = dict.fromkeys(("gate_ptr", "up_ptr", "out_ptr"), "*bf16") | {"inter": "i32", "in_row": "i32"}
    return pointers | {"res_ptr": "*bf16", "n": "i32", "inv_n": "fp32", "eps": "fp32"}


KERNELS = {  # name: (signature of its tensors and numbers, constexprs)
    "rms_norm": (
        dict.fromkeys(("x_ptr", "res_ptr", "w_ptr", "out_ptr", "res_out_ptr"), "*bf16") | {"n": "i32", "inv_n": "fp32", "eps": "fp32"},
        {"HAS_RES": True, "BLOCK": 2048, "EXACT": True},
    ),
    "silu_mul": (_silu_signature(), {"BLOCK": 1024, "EXACT": True, "SCALED": False, "BLOCK_H": 16}),
    "silu_mul_folded": (_silu_signature(), {"BLOCK": 1024, "EXACT": True, "SCALED": True, "BLOCK_H": 2048}),
    "merge": (_merge_signature(), {"DIM": 128, "BLOCK_H": 32, "EXACT": True}),
}  # fmt: skip


def _attend_signature():
    pointers = dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "out_ptr"), "*bf16") | {
        "bounds_ptr": "*i64",
        "col_ptr": "*i64",
    }
    pointers |= {"part_ptr": "*fp32", "lse_ptr": "*fp32"}
    ints = dict.fromkeys(
        ("q_row", "q_head", "k_row", "k_head", "v_row", "v_head", "out_row", "out_head", "heads"), "i32"
    )
    rope = dict.fromkeys(("new_k_ptr", "new_v_ptr", "cos_ptr", "sin_ptr"), "*bf16")
    rope |= dict.fromkeys(("new_k_row", "new_v_row", "cos_row"), "i32")
    rope |= {"res_ptr": "*bf16", "res_n": "i32", "inv_n": "fp32", "eps": "fp32"}  # folded norms' residual rows
    return pointers | ints | {"scale": "fp32", "splits": "i32"} | rope | {"count_ptr": "*i32"}


def _greedy_signature(parts: bool = False) -> dict:
    pointers = {"logits_ptr": "*bf16", "out_ptr": "*fp32", "chosen_ptr": "*fp64", "tokens_ptr": "*i64",
                "positions_ptr": "*i64", "column_ptr": "*i64", "table_ptr": "*bf16", "now_ptr": "*bf16",
                "part_ptr": "*fp64", "count_ptr": "*i32" if parts else "*i64"}  # fmt: skip
    return pointers | {"vocab": "i32", "in_row": "i32", "rows": "i32", "last": "i32", "parts": "i32"}


def _attend(group: int, dim: int, one: bool, rope: bool, scaled: bool = False, merge: bool | None = None) -> dict:
    """Several splits merge in the kernel unless `merge` is False (the merge kernel's way)."""
    consts = {"GROUP": group, "G_PAD": 16, "DIM": dim, "BLOCK": 64, "ONE": one, "ROPE": rope, "EXACT": True}
    merge = not one if merge is None else merge
    return consts | {"SCALED": scaled, "BLOCK_H": 2048 if scaled else 16, "MERGE": merge, "AHEAD": True}


DECODE_KERNELS = {
    "attend": (_attend_signature(), _attend(8, 64, False, False)),
    "attend_merge_kernel": (_attend_signature(), _attend(8, 64, False, False, merge=False)),
    "attend_loads_in_loop": (_attend_signature(), _attend(8, 64, True, True, scaled=True) | {"AHEAD": False}),
    "attend_one_split": (_attend_signature(), _attend(1, 128, True, False)),
    "rope_attend": (_attend_signature(), _attend(8, 64, False, True)),
    "rope_attend_one_split": (_attend_signature(), _attend(1, 128, True, True)),
    "rope_attend_folded": (_attend_signature(), _attend(8, 64, True, True, scaled=True)),
    # A row in one part, and in parts that meet (decode_step.greedy_shape).
    "greedy": (_greedy_signature(), {"WIDTH": 128, "ROTARY": True, "BLOCK": 32768, "EXACT": True, "P_PAD": 1}),
    "greedy_parts": (_greedy_signature(parts=True), {"WIDTH": 128, "ROTARY": True, "BLOCK": 4096, "EXACT": True,
                                                     "P_PAD": 8}),
    "merge_splits": (
        {"part_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*bf16", "out_row": "i32", "out_head": "i32",
         "heads": "i32", "splits": "i32"},
        {"GROUP": 8, "G_PAD": 16, "DIM": 64},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(KERNELS) + sorted(DECODE_KERNELS))
def test_every_kernel_compiles_for_a_gpu(name):
    """What Triton's interpreter cannot show: each kernel compiles to PTX for an H100/H200."""
    from evaluation.engine.server import decode_attention, decode_step

    if name in DECODE_KERNELS:
        signature, consts = DECODE_KERNELS[name]
        kernel = {
            "merge_splits": decode_attention._merge_splits_kernel,
            "greedy": decode_step._greedy_kernel,
            "greedy_parts": decode_step._greedy_kernel,
        }.get(name, decode_attention._attend_kernel)
    else:
        signature, consts = KERNELS[name]
        kernel = getattr(fused, f"_{name.removesuffix('_folded')}_kernel")
    ptx = _ptx(kernel, signature, consts)
    assert ".entry" in ptx
