"""Reading the small JSON files of a model folder, with the checks every one of them shares."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.validation.errors import ValidationFailed

NO_CODE_FIX = "Delete the auto_map entry: only architectures that transformers implements itself are accepted, and remote code is never run."


def read_json(root: Path, name: str, *, max_bytes: int, required: bool = True) -> dict | None:
    path = root / name
    if not path.is_file():
        if required:
            raise ValidationFailed(name, "is missing.", "Include the file that save_pretrained writes.")
        return None
    if path.stat().st_size > max_bytes:
        raise ValidationFailed(
            name, f"is larger than {max_bytes:,} bytes.", "Upload the file that save_pretrained writes."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed(
            name, f"is not valid JSON ({exc}).", "Fix the file or write it again with save_pretrained."
        )
    if not isinstance(data, dict):
        raise ValidationFailed(name, "is not a JSON object.", "Write it again with save_pretrained.")
    return data


def reject_custom_code(root: Path, *, max_bytes: int) -> None:
    """auto_map in any config file makes transformers import Python from the folder."""
    for path in sorted(root.glob("*config*.json")):
        data = read_json(root, path.name, max_bytes=max_bytes)
        if "auto_map" in data:
            raise ValidationFailed(
                path.name, "has auto_map, which asks to run custom code from the submission.", NO_CODE_FIX
            )
        if data.get("trust_remote_code"):
            raise ValidationFailed(path.name, "asks for trust_remote_code.", NO_CODE_FIX)
