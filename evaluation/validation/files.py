"""Which files a model folder may hold. Nothing here opens a file's contents."""

from __future__ import annotations

import shutil
from pathlib import Path

from evaluation.validation.errors import ValidationFailed

# Formats whose loaders unpickle, i.e. can run arbitrary code when loaded.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}
CODE_SUFFIXES = {".py", ".pyc", ".pyo", ".so", ".dylib", ".dll", ".exe", ".sh", ".ipynb", ".pyx", ".js"}
ALLOWED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".md", ".jinja", ".tiktoken", ".yaml", ".yml", ".cff"}
ALLOWED_BARE_NAMES = ("license", "licence", "readme", "notice", "copying", ".gitattributes", ".gitignore")
# Debris that archivers add on macOS: harmless, removed before the checks.
JUNK = ("__MACOSX", ".DS_Store")

CONVERT_FIX = (
    "Convert it to safetensors, e.g. `AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, "
    "safe_serialization=True)` on your own machine, and leave the pickle file out of the archive "
    "(see docs/submitting.md)."
)


def remove_junk(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        rel = path.relative_to(root)
        if rel.parts[0] == "__MACOSX" or path.name == ".DS_Store" or path.name.startswith("._"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def find_model_root(root: Path) -> Path:
    """The folder holding config.json or adapter_config.json: the archive's top, or its one top folder."""
    markers = ("config.json", "adapter_config.json")
    if any((root / m).is_file() for m in markers):
        return root
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and any((entries[0] / m).is_file() for m in markers):
        return entries[0]
    raise ValidationFailed(
        "config.json",
        "was not found at the top of the archive (nor adapter_config.json for a LoRA adapter).",
        "Archive the contents of the folder that save_pretrained wrote, e.g. `tar -czf model.tar.gz -C out .`.",
    )


def check_inventory(root: Path) -> list[str]:
    """Reject pickles, code and unknown files by name; return the relative names of all files."""
    names: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ValidationFailed(rel, "is not a regular file.", "Only regular files are accepted.")
        if path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise ValidationFailed(
                rel,
                "is a pickle-based file; loading it can run arbitrary code, so only safetensors weights are accepted.",
                CONVERT_FIX,
            )
        if suffix in CODE_SUFFIXES:
            raise ValidationFailed(
                rel,
                "is code; submissions may not contain custom code, and the evaluation never runs code from an upload.",
                "Remove it and use an architecture that transformers implements itself (no auto_map).",
            )
        if suffix not in ALLOWED_SUFFIXES and not path.name.lower().startswith(ALLOWED_BARE_NAMES):
            raise ValidationFailed(
                rel,
                "is not a file type a model folder needs.",
                "Keep only config and tokenizer files (.json, .txt, .model), safetensors weights and a README or LICENCE.",
            )
        names.append(rel)
    return names
