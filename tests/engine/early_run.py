"""Run under Triton's interpreter by test_early_products: a tiny fp16 Llama's folded decode steps with
and without the early products (ENGINE_EARLY_PRODUCTS), printing each way's tokens and launches as JSON."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def generate(folder: Path, early: bool) -> tuple[list, int]:
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import early_products
    from evaluation.engine.server.generation import BatchGenerator
    from tests.engine.reference import PROMPTS, rows_for

    os.environ["ENGINE_EARLY_PRODUCTS"] = "1" if early else "0"
    loaded = load_model(folder, device="cpu", dtype="float16")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # norms that are not ones, so that a fold changes the weights
        for layer in loaded.model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
    launches = []
    real = early_products.launch
    early_products.launch = lambda *args, **kwargs: launches.append(args[4]) or real(*args, **kwargs)
    try:
        generator = BatchGenerator(loaded.model, loaded.tokenizer, decode="static")
        rows = rows_for(loaded.tokenizer, PROMPTS[:5], max_new_tokens=8)
        results = generator.generate(rows)
    finally:
        early_products.launch = real
    tokens = [list(r.tokens) if hasattr(r, "tokens") else r for r in results]
    return tokens, launches, generator.folded


def main() -> int:
    from evaluation.engine.server import decode_attention
    from evaluation.engine.tiny import build_tiny_model

    decode_attention.everywhere = True  # the bounded attention on the CPU, as the folded steps need
    folder = build_tiny_model(Path(tempfile.mkdtemp()), "llama", seed=0)
    report = {}
    for early in (True, False):
        tokens, launches, was_folded = generate(folder, early)
        report["early" if early else "plain"] = {"tokens": tokens, "launches": launches, "folded": was_folded}
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
