"""Load a submission for serving: full weights or a LoRA adapter merged into its base.

Safetensors only, no remote code, nothing downloaded. The memory a model needs is estimated from
the safetensors headers before any weight is read, so a model that cannot fit its track's budget
fails in a second with a plain message instead of after minutes of loading.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.engine.errors import ModelLoadError, ModelTooLarge

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 100 * 2**20

GiB = 1024**3
# Activations and the KV cache of at least a few sequences must fit next to the weights.
RUNTIME_HEADROOM = 0.05
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    parameters: int
    name: str
    estimated_bytes: int
    budget_bytes: int | None
    max_positions: int | None


def read_safetensors_header(path: Path) -> dict:
    """The tensors of a safetensors file (`TensorInfo`: dtype, shape, bytes in the file), without reading
    weights, after the upload validator's checks: a truncated file, one with bytes after its last
    tensor or with inconsistent offsets is a load error that says so, whichever way it is then loaded."""
    from evaluation.validation.errors import ValidationFailed
    from evaluation.validation.safetensors_header import read_header

    try:
        return read_header(path, max_header_bytes=MAX_HEADER_BYTES)
    except ValidationFailed as e:
        raise ModelLoadError(e.message)


def estimate_weight_bytes(folders: list[Path], dtype_bytes: int) -> tuple[int, int]:
    """(bytes once loaded in the serving dtype, parameter count) over every safetensors file in `folders`."""
    total = 0
    params = 0
    for folder in folders:
        for file in sorted(folder.glob("*.safetensors")):
            for info in read_safetensors_header(file).values():
                params += info.numel
                kind = info.dtype
                total += info.numel * (dtype_bytes if kind in FLOAT_DTYPES else DTYPE_BYTES.get(kind, 4))
    return total, params


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return dtype


def _check_safetensors_only(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise ModelLoadError(f"{what} folder {folder} does not exist")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles[:3])}; pickled weights are refused)" if pickles else ""
        raise ModelLoadError(f"no .safetensors weights in the {what} folder{hint}")


def format_gb(n_bytes: int) -> str:
    gb = n_bytes / GiB
    return f"{gb:.1f}" if gb >= 1 else f"{gb:.3g}"


# Memory a process holds on the card outside torch's caching allocator: the CUDA context, cuBLAS/cuDNN
# handles, kernels. Measured on an H200 (torch 2.11, CUDA 13): nvidia-smi showed 1.42 GiB more than the
# allocator had reserved. A real 24 GB card holds it too, so it comes off the budget.
CUDA_CONTEXT_ALLOWANCE_BYTES = int(1.5 * GiB)


def allocator_cap_bytes(budget: int, context_bytes: int = CUDA_CONTEXT_ALLOWANCE_BYTES) -> int:
    """What the caching allocator may hold under a track budget: the budget less the CUDA context's share."""
    return max(0, budget - context_bytes)


def allocator_fraction(budget: int, *, total: int, context_bytes: int = CUDA_CONTEXT_ALLOWANCE_BYTES) -> float:
    """The share of the card the caching allocator may take so the whole process fits `budget`.

    A fixed allowance rather than a reading of the card's free memory: free memory also counts other
    processes on the card (a benchmark's parent holding a model made the cap collapse to 2.7 of 6 GiB).
    """
    return max(0.0, min(1.0, allocator_cap_bytes(budget, context_bytes) / total))


def budget_message(needed: int, budget_gb: float, track_name: str | None) -> str:
    track = f"track {track_name}" if track_name else "track"
    return f"needs {format_gb(needed)} GB, {track} allows {budget_gb:g} GB"


# Config attributes that give a model's context length, in the order they are trusted.
CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config: dict[str, Any]) -> int | None:
    """The context length a model's config.json declares (the runner reads it before the server loads)."""
    return next((v for v in (config.get(a) for a in CONTEXT_ATTRS) if isinstance(v, int) and v > 0), None)


def _max_positions(config: Any) -> int | None:
    return context_length({attr: getattr(config, attr, None) for attr in CONTEXT_ATTRS})


def tokenizer_folder(model_dir: Path, base_dir: Path | None = None) -> Path | None:
    """Where a submission's tokenizer is: an adapter's own if it has one, else its base model's."""
    return next((f for f in (model_dir, base_dir) if f is not None and (f / "tokenizer_config.json").exists()), None)


def _from_pretrained(folder: Path, torch_dtype: Any, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    if os.environ.get("ENGINE_FAST_LOAD", "1") != "0":
        import torch

        from evaluation.engine import fast_load

        try:
            model = fast_load.load(folder, torch_dtype, device)
        except torch.cuda.OutOfMemoryError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:  # the usual way says it better
            log.warning("fast load failed (%s: %s); loading with from_pretrained", type(e).__name__, e)
            model = None
        if model is not None:
            return model

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "trust_remote_code": False,
        "local_files_only": True,
        "use_safetensors": True,
    }
    if device != "cpu":
        try:
            import accelerate  # noqa: F401

            kwargs["device_map"] = {"": device}
        except ImportError:
            pass
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as e:
        # An architecture without SDPA support still serves with its default attention.
        if "sdpa" not in str(e).lower() and "attn_implementation" not in str(e):
            raise
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    return model


def load_model(
    model_dir: str | Path,
    *,
    adapter_base: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    memory_budget_gb: float | None = None,
    track_name: str | None = None,
) -> LoadedModel:
    """Load weights (merging a LoRA adapter into `adapter_base` when the folder holds one) for inference.

    Raises ModelTooLarge when the estimate exceeds the budget, ModelLoadError for anything wrong with
    the files. On CUDA the budget is also enforced by the caching allocator from here on.
    """
    import torch

    model_dir = Path(model_dir)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    torch_dtype = getattr(torch, dtype)
    is_adapter = (model_dir / "adapter_config.json").exists()
    if is_adapter and adapter_base is None:
        raise ModelLoadError("the folder holds a LoRA adapter but no base model was given (--adapter-base)")
    base_dir = Path(adapter_base) if is_adapter else model_dir
    _check_safetensors_only(base_dir, "base model" if is_adapter else "model")
    if is_adapter and not (model_dir / "adapter_model.safetensors").exists():
        raise ModelLoadError("the adapter must be saved as adapter_model.safetensors")

    weight_bytes, _ = estimate_weight_bytes([base_dir] + ([model_dir] if is_adapter else []), torch_dtype.itemsize)
    needed = int(weight_bytes * (1 + RUNTIME_HEADROOM))
    budget = int(memory_budget_gb * GiB) if memory_budget_gb else None
    if budget is not None and needed > budget:
        raise ModelTooLarge(budget_message(needed, memory_budget_gb, track_name))
    if budget is not None and device.startswith("cuda"):
        index = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(budget, total=total), index)
        torch.cuda.reset_peak_memory_stats(index)

    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    try:
        model = _from_pretrained(base_dir, torch_dtype, device)
        if is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(model_dir), is_trainable=False).merge_and_unload()
        tokenizer_dir = tokenizer_folder(model_dir, base_dir) or base_dir
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False, local_files_only=True)
    except torch.cuda.OutOfMemoryError:
        raise ModelTooLarge(
            budget_message(needed, memory_budget_gb or 0, track_name) + " (ran out of memory while loading)"
            if budget
            else "ran out of GPU memory while loading"
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as e:
        raise ModelLoadError(f"could not load the model: {type(e).__name__}: {e}")
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        parameters=sum(p.numel() for p in model.parameters()),
        name=model_dir.name,
        estimated_bytes=needed,
        budget_bytes=budget,
        max_positions=_max_positions(model.config),
    )
