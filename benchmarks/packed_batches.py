"""Single-token batches on one GPU, packed (packed.py) against padded, same rows, same stored prefixes:
what one batch costs, how close to the card's matrix rate it runs, and whether the answers agree.

    python -m benchmarks.packed_batches --size 1b --rows 64 128 256 384 --out var/packed-1b

Rows are three runs' multiple-choice prompts as HELM builds them (and `--loners` rows of no run): each run one few-shot prefix
(`--prefix` tokens, default 480) and questions of 30 to 100 tokens, random token ids (the model is a
random-init Llama from benchmarks/engine_speed.py's shapes, bf16, built on the GPU, nothing
downloaded). Each batch runs after its prefixes are stored, as every batch but a run's first does.
MFU = 2 × parameters × tokens computed / seconds / the bf16 matrix rate measured in the same run.
Prints a table; writes `results.json` and `profile.txt` (torch.profiler, one packed batch) to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(size: str, vocab: int = 32000):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from benchmarks.engine_speed import SIZES
    from evaluation.engine.tiny import DEFAULT_CORPUS, train_tokenizer

    hidden, layers, heads, kv_heads, intermediate = SIZES[size]
    tokenizer = train_tokenizer(Path(f"/tmp/packed-bench-tok-{size}"), DEFAULT_CORPUS, vocab_size=2048)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, bos_token_id=0, eos_token_id=0)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    return model, tokenizer


def prompts(rows: int, prefix: int, seed: int = 0, loners: int = 0) -> list[list[int]]:
    """`rows` rows of three runs, then `loners` rows that share no prefix with any other."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, 2048) for _ in range(prefix)] for _ in range(3)]
    runs = [prefixes[i % 3] + [rng.randrange(1, 2048) for _ in range(rng.randint(30, 100))] for i in range(rows)]
    return runs + [[rng.randrange(1, 2048) for _ in range(rng.randint(30, 100))] for _ in range(loners)]


def check_attend() -> dict:
    """`packed.attend` on this device against float64 softmax attention: worst relative error per
    dtype and causality (bf16 operands land between 1e-3 and 1e-2, fp32 far under 1e-3)."""
    import torch

    from evaluation.engine.server.packed import attend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    errors = {}
    for dtype in (torch.bfloat16, torch.float32):
        for causal in (False, True):
            q = torch.randn(4, 8, 77, 64, device=device)
            k, v = torch.randn(4, 8, 77, 64, device=device), torch.randn(4, 8, 77, 64, device=device)
            out, lse = attend(q.to(dtype), k.to(dtype), v.to(dtype), causal, 0.125)
            scores = (q.double() @ k.double().transpose(-1, -2)) * 0.125
            if causal:
                scores = scores.masked_fill(torch.ones(77, 77, dtype=torch.bool, device=device).triu(1), float("-inf"))
            want, want_lse = torch.softmax(scores, -1) @ v.double(), torch.logsumexp(scores, -1)
            errors[f"{str(dtype)[6:]}{'-causal' if causal else ''}"] = {
                "out": ((out.double() - want).norm() / want.norm()).item(),
                "lse": ((lse.double() - want_lse).norm() / want_lse.norm()).item(),
            }
    return errors


def timed(fn, repeat: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b")
    p.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 384])
    p.add_argument("--prefix", type=int, default=480)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--loners", type=int, default=0, help="rows sharing no prefix, added to each batch")
    p.add_argument("--out", default="var/packed-batches")
    args = p.parse_args(argv)

    import torch

    from benchmarks import gpu_ceilings
    from evaluation.engine.server import fused, packed, packed_graphs
    from evaluation.engine.server.generation import BatchGenerator, Row

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ceilings = gpu_ceilings.measure() if torch.cuda.is_available() else {"bf16_matmul_tflops": 1.0}
    attend_errors = check_attend()
    print(json.dumps({"attend_vs_float64": attend_errors}), flush=True)
    model, tokenizer = build(args.size)
    params = sum(p.numel() for p in model.parameters())
    # "packed": varlen flash kernels where the GPU has them, fused layers (fused.py); "graphs": the same
    # in chunks replayed as CUDA graphs (packed_graphs.py); "unfused": packed with Hugging Face's
    # layers and the torch merge; "bucketed": packed, the portable attention; "padded": no packing.
    generators = {
        mode: BatchGenerator(model, tokenizer, prefix_store_bytes=2 * 1024**3, packing=mode != "padded")
        for mode in ("packed", "graphs", "unfused", "bucketed", "padded")
    }
    for mode, generator in generators.items():
        if mode != "graphs":
            generator.graphs = None
        elif generator.graphs is None:
            generator.graphs = packed_graphs.PackedGraphs(model, use_graphs=torch.cuda.is_available())
    generators["graphs"].prepare_graphs()  # as the server's warm-up does: the batches replay these
    results = {"ceilings": ceilings, "size": args.size, "parameters": params, "attend_vs_float64": attend_errors,
               "fused": generators["packed"].fused, "batches": []}  # fmt: skip
    for n in args.rows:
        seqs = prompts(n, args.prefix, loners=args.loners)
        answers = {}
        for mode, generator in generators.items():
            packed.varlen_enabled = mode in ("packed", "graphs", "unfused")
            fused.switched_on = mode != "unfused"
            batch = [Row(prompt_ids=s, max_new_tokens=1) for s in seqs]
            try:
                times = timed(
                    lambda g=generator, b=batch: g.generate(
                        [Row(prompt_ids=r.prompt_ids, max_new_tokens=1) for r in b]
                    ),
                    args.repeat,
                )
            except torch.cuda.OutOfMemoryError:
                generator.release_memory()
                torch.cuda.empty_cache()
                results["batches"].append({"rows": n, "mode": mode, "error": "out of memory"})
                continue
            generator.generate(batch)
            computed = sum(len(s) for s in seqs) - generator.last_skipped_tokens
            seconds = statistics.median(times)
            answers[mode] = batch
            results["batches"].append({
                "rows": n, "mode": mode, "packed": generator.last_packed, "varlen": packed.varlen_enabled,
                "graph_batches": generator.graphs.served if generator.graphs else None,
                "graph_captures": generator.graphs.captures if generator.graphs else None,
                "ms": 1000 * seconds,
                "ms_min": 1000 * min(times), "tokens_computed": computed, "tokens_per_s": computed / seconds,
                "mfu": 2 * params * computed / seconds / (ceilings["bf16_matmul_tflops"] * 1e12),
                "peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0,
            })  # fmt: skip
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        packed.varlen_enabled, fused.switched_on = True, True
        for other in ("graphs", "unfused", "bucketed", "padded"):
            if "packed" in answers and other in answers:
                a, b = answers["packed"], answers[other]
                same = sum(x.tokens == y.tokens for x, y in zip(a, b, strict=True))
                diffs = [abs(x.logprobs[0] - y.logprobs[0]) for x, y in zip(a, b, strict=True) if x.tokens == y.tokens]
                entry = next(e for e in results["batches"] if e["rows"] == n and e["mode"] == other)
                entry["same_as_packed"] = f"{same}/{len(a)}"
                entry["worst_logprob_diff"] = max(diffs, default=None)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    from torch.profiler import ProfilerActivity, profile

    seqs = prompts(max(args.rows), args.prefix)
    generators["packed"].generate([Row(prompt_ids=s, max_new_tokens=1) for s in seqs])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        generators["packed"].generate([Row(prompt_ids=s, max_new_tokens=1) for s in seqs])
        _sync()
    averages = prof.key_averages()
    by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    (out / "profile.txt").write_text(averages.table(sort_by=by, row_limit=30) + "\n\n"
                                     + averages.table(sort_by="self_cpu_time_total", row_limit=20))  # fmt: skip
    print(f"{args.size}: {params / 1e9:.2f} B parameters; bf16 {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s")
    print("| rows | mode | ms | tokens computed | tokens/s | MFU | peak GiB | same as packed | worst logprob diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in results["batches"]:
        if "error" in b:
            print(f"| {b['rows']} | {b['mode']} | {b['error']} | | | | | | |")
            continue
        print(f"| {b['rows']} | {b['mode']} | {b['ms']:.1f} | {b['tokens_computed']:,} | {b['tokens_per_s']:,.0f} | "
              f"{100 * b['mfu']:.0f}% | {b['peak_gb']:.1f} | {b.get('same_as_packed', '')} | "
              f"{b.get('worst_logprob_diff', '')} |")  # fmt: skip
    print(averages.table(sort_by=by, row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
