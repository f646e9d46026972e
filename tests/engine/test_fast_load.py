"""fast_load gives the model from_pretrained gives, bitwise, or says it cannot."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from evaluation.engine import fast_load, loading


def same_models(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    assert type(a) is type(b) and a.generation_config == b.generation_config
    assert (a.get_output_embeddings().weight is a.get_input_embeddings().weight) == (
        b.get_output_embeddings().weight is b.get_input_embeddings().weight
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_same_model_as_from_pretrained(tiny_model_dir, dtype):
    expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation="sdpa")
    got = fast_load.load(tiny_model_dir, dtype, "cpu")
    assert got is not None
    same_models(got, expected)
    assert got.config._attn_implementation == "sdpa"


def test_large_tensors_are_read_in_pieces_by_several_threads(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(fast_load, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(fast_load, "THREADS", 3)
    files = sorted(tiny_llama_dir.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    plan = fast_load._plan(model, files)
    assert len(fast_load._pieces(plan)) > 3 * len(plan)  # most tensors in several pieces
    expected = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    same_models(fast_load.load(tiny_llama_dir, torch.float32, "cpu"), expected)


def edited_copy(src, tmp_path, edit):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_what_it_cannot_map_exactly_is_left_to_from_pretrained(tiny_llama_dir, tmp_path):
    extra = edited_copy(tiny_llama_dir, tmp_path / "a", lambda w: w.update({"model.unknown.weight": torch.ones(3)}))
    assert fast_load.load(extra, torch.float32, "cpu") is None
    missing = edited_copy(tiny_llama_dir, tmp_path / "b", lambda w: w.pop("model.norm.weight"))
    assert fast_load.load(missing, torch.float32, "cpu") is None

    def reshape(w):
        w["model.norm.weight"] = w["model.norm.weight"][:-1].clone()

    assert fast_load.load(edited_copy(tiny_llama_dir, tmp_path / "c", reshape), torch.float32, "cpu") is None


def test_load_model_uses_it_unless_turned_off(tiny_llama_dir, monkeypatch):
    calls = []
    real = fast_load.load
    monkeypatch.setattr(fast_load, "load", lambda *a: calls.append(a) or real(*a))
    fast = loading.load_model(tiny_llama_dir, device="cpu", dtype="float32")
    assert len(calls) == 1
    monkeypatch.setenv("ENGINE_FAST_LOAD", "0")
    usual = loading.load_model(tiny_llama_dir, device="cpu", dtype="float32")
    assert len(calls) == 1
    same_models(fast.model, usual.model)
    assert not fast.model.training


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_truncated_or_overlong_file_fails_as_a_load_error_that_says_so(tiny_llama_dir, tmp_path, monkeypatch, fast):
    """Either way of loading: the upload validator's own header checks, before any weight is read."""
    monkeypatch.setenv("ENGINE_FAST_LOAD", fast)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(loading.ModelLoadError, match="model.safetensors: .*data offsets outside the file"):
        loading.load_model(broken, device="cpu", dtype="float32")
    (broken / "model.safetensors").write_bytes(data + b"12345678")  # from_pretrained refuses these too
    with pytest.raises(loading.ModelLoadError, match="model.safetensors: has 8 bytes after its last tensor"):
        loading.load_model(broken, device="cpu", dtype="float32")


def test_reads_that_return_less_than_asked_are_continued(tiny_llama_dir, monkeypatch):
    import os

    real = os.preadv
    short = []

    def at_most_777(fd, buffers, offset):
        short.append(1)
        return real(fd, [buffers[0][:777]], offset)

    monkeypatch.setattr(fast_load.os, "preadv", at_most_777)
    expected = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    same_models(fast_load.load(tiny_llama_dir, torch.float32, "cpu"), expected)
    assert len(short) > 100
