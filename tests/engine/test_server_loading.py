"""Loading and its faults: the command line contract, budgets, bad weights, NaN output, adapters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from evaluation.engine.errors import ModelLoadError, ModelTooLarge
from evaluation.engine.loading import estimate_weight_bytes, load_model
from tests.engine.reference import PROMPTS, greedy_reference

ROOT = Path(__file__).resolve().parents[2]


def _server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaluation.engine.server", "--device", "cpu", "--port", "0", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_too_large_model_fails_fast_with_one_json_line(tiny_llama_dir):
    proc = subprocess.run(
        _server_command("--model", str(tiny_llama_dir), "--track-memory-gb", "0.0001", "--track-name", "4090"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    error = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert error["type"] == "ModelTooLarge" and error["kind"] == "user"
    assert error["message"].startswith("needs ") and error["message"].endswith("track 4090 allows 0.0001 GB")


def test_command_line_server_starts_serves_and_stops(tiny_gpt2_dir):
    proc = subprocess.Popen(
        _server_command("--model", str(tiny_gpt2_dir), "--track-memory-gb", "24", "--max-batch-size", "4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["status"] == "ready" and ready["device"] == "cpu"
        health = requests.get(f"{ready['url']}/health", timeout=10).json()
        assert health["parameters"] > 0 and health["budget_bytes"] == 24 * 1024**3
        answer = requests.post(
            f"{ready['url']}/process", json={"prompt": "The", "max_new_tokens": 3, "temperature": 0}
        ).json()
        assert len(answer["tokens"]) <= 3
        assert requests.get(f"{ready['url']}/stats", timeout=10).json()["limits"]["max_batch_size"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_estimate_counts_every_tensor(tiny_llama_dir):
    fp32, params = estimate_weight_bytes([tiny_llama_dir], 4)
    bf16, _ = estimate_weight_bytes([tiny_llama_dir], 2)
    model = load_model(tiny_llama_dir, device="cpu", dtype="float32")
    assert params == model.parameters and fp32 == 4 * params and bf16 == 2 * params
    with pytest.raises(ModelTooLarge, match=r"needs 0.000\d+ GB, track allows 0.0001 GB"):
        load_model(tiny_llama_dir, device="cpu", memory_budget_gb=0.0001)


def test_pickled_weights_are_refused(tiny_llama_dir, tmp_path):
    folder = _copy_model(tiny_llama_dir, tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pickled weights are refused"):
        load_model(folder, device="cpu")


def test_adapter_without_base_is_a_user_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="--adapter-base"):
        load_model(tmp_path, device="cpu")


def test_nan_logits_are_reported_not_scored(tiny_llama_dir, tmp_path, start_server):
    folder = _copy_model(tiny_llama_dir, tmp_path / "nan")
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"][5, :] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    server = start_server(folder)
    for fields in ({"max_new_tokens": 4}, {"max_new_tokens": 0, "echo_prompt": True}):
        answer = requests.post(
            f"{server.url}/process", json={"prompt": PROMPTS[1], "temperature": 0, **fields}, timeout=30
        )
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["type"] == "NonFiniteOutput" and error["kind"] == "user"
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["non_finite_outputs"] == 2 and stats["failed_requests"] == 2


def test_lora_adapter_is_merged_into_its_base(tiny_llama_dir, tmp_path, start_server):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    adapter_dir = tmp_path / "adapter"
    get_peft_model(base, config).save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").exists()

    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(fresh, adapter_dir).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = tokenizer(PROMPTS[3])["input_ids"]
    expected = greedy_reference(merged, tokenizer, ids, 6)

    server = start_server(adapter_dir, "--adapter-base", str(tiny_llama_dir))
    time.sleep(0)  # started synchronously; nothing to wait for
    body = requests.post(
        f"{server.url}/process", json={"prompt": PROMPTS[3], "max_new_tokens": 6, "temperature": 0}
    ).json()
    assert body["text"] == tokenizer.decode(expected)
    with torch.inference_mode():
        merged_logits = merged(torch.tensor([ids])).logits[0, -1]
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)(
            torch.tensor([ids])
        ).logits[0, -1]
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3), "the adapter must change the model"
    first = torch.log_softmax(merged_logits.float(), -1)[expected[0]].item()
    assert abs(body["tokens"][0]["logprob"] - first) < 1e-4


def test_the_cuda_context_comes_off_the_track_budget():
    from evaluation.engine.loading import CUDA_CONTEXT_ALLOWANCE_BYTES, allocator_fraction

    GiB = 1024**3
    total = 141 * GiB
    # The allocator gets the budget less what the process holds outside it (1.5 GiB allowance).
    assert allocator_fraction(24 * GiB, total=total) * total == pytest.approx(24 * GiB - CUDA_CONTEXT_ALLOWANCE_BYTES)
    assert allocator_fraction(80 * GiB, total=40 * GiB, context_bytes=0) == 1.0
    assert allocator_fraction(1 * GiB, total=total) == 0.0


def test_gpu_batch_limits_are_sized_for_the_allocator_cap_not_the_whole_budget(monkeypatch, tiny_llama_dir):
    """On an H200 at 6 GB, limits sized for 6 GB under a 4.5 GB cap split 105 batches for lack of memory."""
    import torch

    from evaluation.engine.loading import CUDA_CONTEXT_ALLOWANCE_BYTES, load_model
    from evaluation.engine.server.batching import default_limits

    GiB = 1024**3
    model = load_model(tiny_llama_dir, device="cpu").model
    weights = 2 * GiB
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index=None: weights)
    budget = 6 * GiB
    limits = default_limits(model, "cuda:0", budget)
    cfg = model.config
    elem = next(model.parameters()).element_size()
    kv_per_token = (
        2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * elem
    )
    per_token = kv_per_token + (6 * cfg.hidden_size + 3 * cfg.intermediate_size) * elem
    free_under_cap = budget - CUDA_CONTEXT_ALLOWANCE_BYTES - weights
    assert limits.max_batch_tokens == min(int(0.6 * free_under_cap / per_token), 1 << 20)
    # Room for four few-shot prefixes of ~600 tokens; batches that keep them are that much smaller.
    assert limits.prefix_store_bytes == min(free_under_cap // 5, 4 * 600 * kv_per_token)
    assert limits.prefix_store_tokens == int(0.6 * limits.prefix_store_bytes / per_token)
