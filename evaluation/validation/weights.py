"""Weights: shards and index, dtypes, shapes against what the config implies, and memory."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from evaluation.validation.errors import ValidationFailed
from evaluation.validation.rules import Rules
from evaluation.validation.safetensors_header import WEIGHT_DTYPES, TensorInfo, read_header

INDEX = "model.safetensors.index.json"
RESAVE = (
    "Save the model again with `save_pretrained(out, safe_serialization=True)` from the same transformers model class."
)


def expected_shapes(
    config_dir: Path, shown: str = "config.json"
) -> tuple[object, dict[str, tuple[int, ...]], set[str]]:
    """Build the model on the meta device (no memory, no code from the folder) and list its tensors.

    Returns the config, the state-dict shapes and the names that may be left out because they are
    tied to another tensor.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True, trust_remote_code=False)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a bad config
        logging.getLogger(__name__).info("config rejected: %r", exc)
        raise ValidationFailed(
            shown,
            f"cannot be turned into a model by transformers ({type(exc).__name__}: {str(exc)[:300]}).",
            "Use the config.json that save_pretrained wrote for your model.",
        )
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied_keys = getattr(model, "_tied_weights_keys", None) or []
    tied = set(tied_keys.keys() if isinstance(tied_keys, dict) else tied_keys)
    if not getattr(config, "tie_word_embeddings", False):
        tied = set()
    return config, shapes, tied


def read_weights(root: Path, rules: Rules, names: list[str], *, prefix: str = "model") -> dict[str, TensorInfo]:
    """All tensors of the folder's safetensors files, checked against the index when there is one."""
    shard_files = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if not shard_files:
        raise ValidationFailed(f"{prefix}.safetensors", "is missing: no safetensors weights were found.", RESAVE)
    index_map: dict[str, str] | None = None
    if (root / INDEX).is_file():
        if (root / INDEX).stat().st_size > rules.max_json_bytes:
            raise ValidationFailed(INDEX, "is too large.", RESAVE)
        try:
            index = json.loads((root / INDEX).read_text(encoding="utf-8"))
            index_map = index["weight_map"]
            assert isinstance(index_map, dict) and all(isinstance(v, str) for v in index_map.values())
        except Exception:
            raise ValidationFailed(INDEX, "is not a valid safetensors index (a weight_map of tensor → file).", RESAVE)
        missing_files = sorted(set(index_map.values()) - set(shard_files))
        if missing_files:
            raise ValidationFailed(
                missing_files[0],
                f"is listed in {INDEX} but is not in the upload.",
                "Include every shard listed in the index.",
            )
        shard_files = sorted(set(index_map.values()))
    tensors: dict[str, TensorInfo] = {}
    for shard in shard_files:
        for name, info in read_header(root / shard, max_header_bytes=rules.max_header_bytes, display=shard).items():
            if name in tensors:
                raise ValidationFailed(shard, f"repeats tensor {name!r}, already in another shard.", RESAVE)
            if index_map is not None and index_map.get(name) != shard:
                raise ValidationFailed(shard, f"holds tensor {name!r}, which {INDEX} places elsewhere.", RESAVE)
            if info.dtype not in WEIGHT_DTYPES:
                raise ValidationFailed(
                    shard,
                    f"stores tensor {name!r} as {info.dtype}; weights must be float32, float16 or bfloat16.",
                    "Dequantize the model (merge QLoRA into bf16 weights) and save it again.",
                )
            tensors[name] = info
    if index_map is not None:
        absent = sorted(set(index_map) - set(tensors))
        if absent:
            raise ValidationFailed(INDEX, f"lists tensor {absent[0]!r}, which no shard holds.", RESAVE)
    return tensors


def check_full_shapes(
    tensors: dict[str, TensorInfo], shapes: dict[str, tuple[int, ...]], tied: set[str], architecture: str
) -> None:
    for name, info in tensors.items():
        if name not in shapes:
            raise ValidationFailed(name, f"is not a tensor of {architecture} as config.json describes it.", RESAVE)
        if info.shape != shapes[name]:
            raise ValidationFailed(
                name,
                f"has shape {list(info.shape)} but config.json implies {list(shapes[name])}.",
                "Make config.json match the weights (hidden size, layers, heads, vocabulary size) or save the model again.",
            )
    missing = sorted(set(shapes) - set(tensors) - tied)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValidationFailed(missing[0] + more, "is missing from the weights.", "Upload every shard of the model.")


def estimate_memory_gb(parameters: int, rules: Rules) -> float:
    """bf16 weights (2 bytes each) plus a margin for activations and the KV cache, plus CUDA's own."""
    return parameters * 2 / 1024**3 * rules.memory_factor + rules.memory_overhead_gb


def check_memory(parameters: int, rules: Rules, shown: str) -> float:
    estimate = estimate_memory_gb(parameters, rules)
    if estimate > rules.memory_budget_gb:
        raise ValidationFailed(
            shown,
            f"describes {parameters:,} parameters: about {estimate:.1f} GB for bf16 inference, above this track's {rules.memory_budget_gb:g} GB.",
            "Submit a smaller model, or enter the track with the larger GPU.",
        )
    return estimate
