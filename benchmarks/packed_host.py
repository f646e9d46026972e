"""The host's part of a packed multiple-choice batch, on any machine: what the model thread does before
and after a batch's forward, with the forward itself taken out.

    python -m benchmarks.packed_host --rows 60 --batches 200 [--profile]

A tiny Llama on the CPU, a `BatchGenerator` with its packed graphs (`packed_graphs.PackedGraphs`, no CUDA
graphs on the CPU) whose replay is replaced by an all-zero logits tensor, and batches shaped like the
prefill-mc suite's: rows of three runs, each a ~450-token few-shot prefix (stored by the first batches)
and a question of 60-140 tokens of its own, in random order. What is left is the host's work a batch:
grouping the rows by prefix, packing them, filling the graph's inputs, choosing each row's answer.
Prints one JSON line: milliseconds a batch in all and until its forward would be launched
(`last_launch_seconds`). Session 19 took this from 4.25-4.44 ms to 1.23 ms a 60-row batch on the CPU
box (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import packed_graphs
    from evaluation.engine.server.generation import BatchGenerator, Row
    from evaluation.engine.tiny import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--prefix", type=int, default=450, help="tokens of each run's few-shot prefix")
    parser.add_argument("--profile", action="store_true", help="then the same batches under cProfile")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(build_tiny_model(tmp, "llama", seed=1, num_layers=1), device="cpu", dtype="float32")
    generator = BatchGenerator(loaded.model, loaded.tokenizer, prefix_store_bytes=256 * 1024**2)
    graphs = generator.graphs = packed_graphs.PackedGraphs(loaded.model, use_graphs=False)
    vocab = loaded.model.config.vocab_size
    layers = len(graphs.inner.layers)

    def no_forward(g):  # the replay, as if the GPU answered at once
        g.plan.layers_seen.update(range(layers))
        return torch.zeros(g.shape.rows, vocab)

    graphs._run = no_forward
    rnd = random.Random(0)
    prefixes = [[rnd.randrange(1, vocab) for _ in range(args.prefix)] for _ in range(3)]

    def batch() -> list[Row]:
        rows = [
            Row(prompt_ids=prefixes[i % 3] + [rnd.randrange(1, vocab) for _ in range(rnd.randrange(60, 140))],
                max_new_tokens=1)
            for i in range(args.rows)
        ]  # fmt: skip
        rnd.shuffle(rows)
        return rows

    with torch.inference_mode():
        for _ in range(3):  # the prefixes stored, as after an evaluation's first batches
            generator.generate(batch())
        batches = [batch() for _ in range(args.batches)]
        launch = 0.0
        started = time.perf_counter()
        for rows in batches:
            generator.generate(rows)
            launch += getattr(generator, "last_launch_seconds", 0.0)  # (before session 19: none)
        seconds = time.perf_counter() - started
        print(json.dumps({"rows": args.rows, "batches": args.batches, "ms_a_batch": round(1000 * seconds / args.batches, 3),
                          "launch_ms_a_batch": round(1000 * launch / args.batches, 3),
                          "packed_by_graphs": graphs.served}))  # fmt: skip
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for rows in batches:
                generator.generate(rows)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
