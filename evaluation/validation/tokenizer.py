"""The tokenizer: present, of a built-in class, loadable offline, and consistent with the model."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from evaluation.validation.errors import ValidationFailed

FILE_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("spiece.model",), ("vocab.txt",))
FIX = "Save the tokenizer into the same folder: `tokenizer.save_pretrained(out)`."


def has_tokenizer(root: Path) -> bool:
    return any(all((root / f).is_file() for f in files) for files in FILE_SETS)


def check_tokenizer(root: Path, *, vocab_size: int | None) -> int:
    """Load the tokenizer offline, never with remote code; return its size."""
    if not has_tokenizer(root):
        raise ValidationFailed("tokenizer.json", "is missing (no tokenizer files were found).", FIX)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
            ids = tok("Question: What is 2 plus 3? Answer:")["input_ids"]
    except Exception as exc:
        raise ValidationFailed(
            "tokenizer", f"could not be loaded offline ({type(exc).__name__}: {str(exc)[:300]}).", FIX
        )
    if not ids:
        raise ValidationFailed("tokenizer", "turns text into no tokens at all.", FIX)
    size = len(tok)
    if vocab_size is not None and size > vocab_size:
        raise ValidationFailed(
            "tokenizer",
            f"has {size:,} tokens but config.json's vocab_size is {vocab_size:,}: some token ids have no embedding.",
            "Resize the embeddings (`model.resize_token_embeddings(len(tokenizer))`) before saving.",
        )
    return size
