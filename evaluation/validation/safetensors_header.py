"""Read a safetensors header without loading a single tensor, and check it for consistency."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.validation.errors import ValidationFailed

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# Weights the inference engine loads and casts to bf16.
WEIGHT_DTYPES = {"F32", "F16", "BF16"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    span: tuple[int, int] = field(default=(0, 0), compare=False)  # its bytes in the file, [begin, end)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path, *, max_header_bytes: int, display: str | None = None) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, after checking that the file really holds them."""
    shown = display or path.name
    convert = "Save the weights again with `model.save_pretrained(out, safe_serialization=True)`."
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValidationFailed(shown, "is too short to be a safetensors file.", convert)
        (n,) = struct.unpack("<Q", head)
        if n > max_header_bytes:
            raise ValidationFailed(
                shown, f"declares a {n:,}-byte header, above the {max_header_bytes:,}-byte limit.", convert
            )
        if 8 + n > size:
            raise ValidationFailed(
                shown, "is truncated: its header runs past the end of the file.", "Upload the complete file."
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValidationFailed(
            shown, "does not start with a JSON safetensors header (is it really safetensors?).", convert
        )
    if not isinstance(header, dict):
        raise ValidationFailed(shown, "has a header that is not a JSON object.", convert)
    buffer = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValidationFailed(shown, "has __metadata__ that is not a map of strings.", convert)
            continue
        if not isinstance(entry, dict):
            raise ValidationFailed(shown, f"describes tensor {name!r} with something that is not an object.", convert)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise ValidationFailed(shown, f"gives tensor {name!r} the unknown dtype {str(dtype)[:40]!r}.", convert)
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValidationFailed(shown, f"gives tensor {name!r} an invalid shape {str(shape)[:60]}.", convert)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer
        ):
            raise ValidationFailed(
                shown, f"gives tensor {name!r} data offsets outside the file.", "Upload the complete file; " + convert
            )
        info = TensorInfo(name, dtype, tuple(shape), (8 + n + offsets[0], 8 + n + offsets[1]))
        if offsets[1] - offsets[0] != info.numel * DTYPE_BYTES[dtype]:
            raise ValidationFailed(
                shown,
                f"says tensor {name!r} is {dtype}{list(shape)} but stores {offsets[1] - offsets[0]:,} bytes for it.",
                convert,
            )
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = info
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise ValidationFailed(shown, f"has overlapping or gapped tensor data at {name!r}.", convert)
        cursor = end
    if cursor != buffer:
        raise ValidationFailed(shown, f"has {buffer - cursor:,} bytes after its last tensor.", convert)
    return tensors
