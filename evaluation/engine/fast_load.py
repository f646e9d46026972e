"""Load safetensors weights into a model built on its device, reading the files with several threads.

Hugging Face's `from_pretrained` maps each file and copies tensor by tensor from the mapping, on one
thread, from pageable memory. On the H200 box a 6.7 B model took 2.7–3.2 s to load that way, this
way 1.0–1.3 s (`benchmarks/load_speed.py`, docs/benchmarks.md). Here the model is built from its
config directly on the device, without random initialisation, and each file's bytes are read with
`os.preadv` (the kernel copies from the page cache) by a few threads at once, each into its own
pinned buffer, then copied to the device on that thread's own CUDA stream.

The result is the same model: the same modules from the same config, and every tensor of the files
copied, bitwise, into the parameter or buffer of the same name (converted to the model's dtype as
Hugging Face does). Anything this cannot map exactly (names the model does not have, parameters no
file provides, shapes that differ, a dtype safetensors knows and torch does not) returns None, and
the caller loads the Hugging Face way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20
THREADS = 4
DTYPES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


def _no_init():
    """Hugging Face's switch that skips random initialisation (every weight is overwritten anyway)."""
    for module in ("transformers.modeling_utils", "transformers.initialization"):
        try:
            return __import__(module, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def _plan(model: Any, files: list[Path]) -> list[tuple] | None:
    """(file, start, length, target tensor, file dtype, shape) for every tensor of the files, or None."""
    import torch

    from evaluation.engine.loading import read_safetensors_header  # the checked header: sizes, offsets

    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers(remove_duplicate=False)))
    plan, covered = [], set()
    for path in files:
        for name, info in read_safetensors_header(path).items():
            target = targets.get(name)
            dtype = getattr(torch, DTYPES.get(info.dtype, ""), None)
            if target is None or dtype is None or tuple(target.shape) != info.shape or not target.is_contiguous():
                log.info("fast load not possible: %s (%s, %s)", name, info.dtype, info.shape)
                return None
            begin, end = info.span
            plan.append((path, begin, end - begin, target, dtype, info.shape))
            covered.add(id(target))
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        log.info("fast load not possible: no weights for %s", missing[:3])
        return None
    return plan


def _pieces(plan: list[tuple]) -> list[tuple]:
    """The plan cut into reads of at most CHUNK_BYTES; a tensor needing a dtype conversion stays whole."""
    pieces = []
    for path, start, length, target, dtype, shape in plan:
        if dtype != target.dtype or length <= CHUNK_BYTES:
            pieces.append((path, start, length, target, dtype, shape, 0))
            continue
        for offset in range(0, length, CHUNK_BYTES):
            pieces.append((path, start + offset, min(CHUNK_BYTES, length - offset), target, dtype, None, offset))
    return pieces


def _read_into(fd: int, into: memoryview, start: int, path: Path) -> None:
    """Fill `into` from the file at `start` (one read returns at most ~2 GiB on Linux)."""
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], start + done)
        if got <= 0:
            raise OSError(f"{path.name}: read {done} of {len(into)} bytes at {start}")
        done += got


def _read_all(pieces: list[tuple], device: Any) -> None:
    import torch

    cuda = device.type == "cuda"
    largest = max(p[2] for p in pieces)
    lock = threading.Lock()
    queue = list(reversed(pieces))
    errors: list[BaseException] = []

    def worker() -> None:
        with torch.no_grad():  # autograd's mode is per thread
            work()

    def work() -> None:
        buffer = torch.empty(largest, dtype=torch.uint8, pin_memory=cuda)
        stream = torch.cuda.Stream(device) if cuda else None
        fds: dict[Path, int] = {}
        try:
            while True:
                with lock:
                    if not queue or errors:
                        break
                    path, start, length, target, dtype, shape, offset = queue.pop()
                if stream is not None:
                    stream.synchronize()  # the previous copy out of `buffer` is done
                view = buffer[:length]
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY)
                _read_into(fd, memoryview(view.numpy()), start, path)
                with torch.cuda.stream(stream):  # no stream (CPU): no-op
                    if shape is None or dtype == target.dtype:
                        flat = target.view(-1).view(torch.uint8)
                        flat[offset : offset + length].copy_(view, non_blocking=cuda)
                    else:
                        target.copy_(view.view(dtype).reshape(shape), non_blocking=cuda)
            if stream is not None:
                stream.synchronize()
        except BaseException as e:  # noqa: BLE001 - reported by the caller's thread
            errors.append(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(min(THREADS, len(pieces)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def load(folder: Path, torch_dtype: Any, device: str) -> Any | None:
    """The model of `folder` on `device` in `torch_dtype`, or None where this way cannot be exact."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    files = sorted(Path(folder).glob("*.safetensors"))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    if not files or getattr(config, "quantization_config", None):
        return None
    target = torch.device(device)
    with target, _no_init():
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation="sdpa")
        except (ValueError, ImportError, TypeError):
            return None
    model.tie_weights()  # as from_pretrained does: a tied head is no weight of its own in the files
    plan = _plan(model, files)
    if plan is None:
        return None
    _read_all(_pieces(plan), target)
    if (Path(folder) / "generation_config.json").exists():  # as from_pretrained reads it (eos tokens)
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    return model
