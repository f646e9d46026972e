"""Engine speed on one GPU: the batched server under many concurrent HELM-style requests, against
one-request-at-a-time Hugging Face `generate` (the 2023 sample servers' way), same model, same prompts.

    python benchmarks/engine_speed.py --size 1b --track-memory-gb 24 --mc 600 --gen 100 --gen-tokens 128

Builds a random-init Llama model from a config (bf16, nothing downloaded), serves it with
`evaluation.engine.server` in this process, and prints a table: wall time, speed-up, tokens/s, MFU
(2 × parameters per prompt token against a bf16 matmul measured in the same run), share of memory
bandwidth for decoding (weights read per step against a device copy measured in the same run) and peak
memory. `--check-equality` first checks on this device that batched fp32 greedy output equals
sequential `generate` for tiny Llama and GPT-2 models. Stock `helm-run` (column A of issue 8) is run
separately; this script covers B and ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {
    # name: (hidden, layers, heads, kv heads, intermediate)
    "tiny": (256, 4, 8, 8, 512),
    "1b": (2048, 22, 32, 4, 5632),
    "7b": (4096, 32, 32, 32, 11008),
}
FEW_SHOT = (
    "".join(
        f"Question: What is {a} plus {b}? A. {a + b} B. {a + b + 1} C. {a * b} D. {a - b}\nAnswer: A\n\n"
        for a, b in [(2, 3), (7, 4), (10, 12), (5, 9), (8, 8)]
    )
    * 3
)


def build_model(out: Path, size: str, vocab_size: int = 32000) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from evaluation.engine.tiny import DEFAULT_CORPUS, train_tokenizer

    hidden, layers, heads, kv_heads, intermediate = SIZES[size]
    tokenizer = train_tokenizer(out, DEFAULT_CORPUS, vocab_size=2048, model_max_length=4096)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def check_equality(device: str) -> dict:
    """Batched fp32 greedy == sequential generate, on this device and this transformers version."""
    import torch

    from evaluation.engine.loading import load_model
    from evaluation.engine.server.generation import BatchGenerator, Row
    from evaluation.engine.tiny import build_tiny_model

    prompts = ["The quick brown fox", "Question: What is 2 plus 3? Answer:", "A", FEW_SHOT[:200] + "Q:"]
    prompts += [FEW_SHOT + "Question: What is 1 plus 1?", FEW_SHOT + "Question: When?"]
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "gpt2"):
            loaded = load_model(build_tiny_model(Path(tmp) / arch, arch), device=device, dtype="float32")
            model, tok = loaded.model, loaded.tokenizer
            for max_new in (1, 10):
                rows = [Row(prompt_ids=tok(p)["input_ids"], max_new_tokens=max_new) for p in prompts]
                gen = BatchGenerator(model, tok)
                gen.generate(rows)
                same = 0
                for row in rows:
                    ids = torch.tensor([row.prompt_ids], device=model.device)
                    ref = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=False,
                        max_new_tokens=max_new,
                        pad_token_id=tok.pad_token_id,
                    )[0, ids.shape[1] :].tolist()
                    ref = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
                    same += row.tokens == ref
                report[f"{arch} max_new={max_new}"] = (
                    f"{same}/{len(rows)} equal, shared prefix {gen.last_shared_prefix}"
                )
    return report


def measure_ceilings() -> tuple[float, float]:
    """(bf16 matmul FLOP/s, device-to-device copy bytes/s) measured now on this GPU."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    flops = 10 * 2 * 8192**3 / (time.perf_counter() - t)
    x = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bandwidth = 10 * 2 * x.numel() / (time.perf_counter() - t)
    del a, b, x, y
    torch.cuda.empty_cache()
    return flops, bandwidth


def workloads(n_mc: int, n_gen: int, gen_tokens: int) -> dict[str, list[dict]]:
    mc = [
        {
            "prompt": FEW_SHOT + f"Question: What is {i} plus {i % 7}? A. {i} B. {2 * i} C. {i + i % 7} D. 0\nAnswer:",
            "max_new_tokens": 1,
            "temperature": 1e-7,
            "num_return_sequences": 1,
            "top_p": 1,
            "echo_prompt": False,
            "stop_sequences": [],
        }
        for i in range(n_mc)
    ]
    gen = [
        {
            "prompt": f"Passage {i}: The meeting was moved to day {i}. Summarise the passage.",
            "max_new_tokens": gen_tokens,
            "temperature": 1e-7,
            "num_return_sequences": 1,
            "top_p": 1,
            "echo_prompt": False,
            "stop_sequences": [],
        }
        for i in range(n_gen)
    ]
    return {"prefill-heavy (multiple choice)": mc, "decode-heavy (generation)": gen}


def run_ours(url: str, requests_: list[dict], concurrency: int) -> tuple[float, list[dict]]:
    import requests

    session_pool = ThreadPoolExecutor(concurrency)
    start = time.perf_counter()
    answers = list(
        session_pool.map(lambda body: requests.post(f"{url}/process", json=body, timeout=3000).json(), requests_)
    )
    wall = time.perf_counter() - start
    session_pool.shutdown()
    return wall, answers


def run_sequential(model, tokenizer, requests_: list[dict], sample: int) -> tuple[float, int]:
    """One request at a time with generate(); times `sample` requests and extrapolates."""
    import torch

    subset = requests_[:sample]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for body in subset:
        ids = tokenizer(body["prompt"], return_tensors="pt").input_ids.to(model.device)
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=body["max_new_tokens"],
            pad_token_id=tokenizer.pad_token_id,
        )
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * len(requests_) / len(subset), len(subset)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="1b")
    p.add_argument("--model", help="use this model folder instead of building one")
    p.add_argument("--track-memory-gb", type=float, default=24)
    p.add_argument("--mc", type=int, default=600)
    p.add_argument("--gen", type=int, default=100)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--baseline-sample", type=int, default=20)
    p.add_argument("--check-equality", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    import requests
    import torch

    from evaluation.engine.server import serve

    results: dict = {
        "size": args.size,
        "track_memory_gb": args.track_memory_gb,
        "device": torch.cuda.get_device_name(0),
    }
    import transformers

    results["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if args.check_equality:
        results["equality"] = check_equality("cuda")
        print(json.dumps(results["equality"], indent=1), flush=True)
    flops, bandwidth = measure_ceilings()
    results["ceilings"] = {"bf16_matmul_tflops": flops / 1e12, "copy_tb_per_s": bandwidth / 1e12}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp) / args.size, args.size)
        server = serve(
            [
                "--model",
                str(model_dir),
                "--port",
                "0",
                "--track-memory-gb",
                str(args.track_memory_gb),
                "--log-level",
                "WARNING",
            ]
        )
        url = f"http://127.0.0.1:{server.server_address[1]}"
        service = server.service
        params = service.loaded.parameters
        # What a decode step reads: every weight but the input embedding table (a row a sequence of
        # it), unless the table is also the head.
        model = service.loaded.model
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is embed
        weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters() if tied or t is not embed)
        rows = []
        for name, reqs in workloads(args.mc, args.gen, args.gen_tokens).items():
            before = requests.get(f"{url}/stats").json()
            wall, answers = run_ours(url, reqs, args.concurrency)
            after = requests.get(f"{url}/stats").json()
            errors = [a for a in answers if "error" in a]
            prompt_tokens = after["prompt_tokens"] - before["prompt_tokens"]
            output_tokens = after["output_tokens"] - before["output_tokens"]
            steps = after["decode_steps"] - before["decode_steps"]
            # Prefix sharing skips most prompt tokens: MFU counts only the tokens really computed.
            computed = prompt_tokens - (after["shared_prefix_tokens"] - before["shared_prefix_tokens"])
            busy = after["busy_seconds"] - before["busy_seconds"]
            baseline, sampled = run_sequential(service.loaded.model, service.tokenizer, reqs, args.baseline_sample)
            rows.append(
                {
                    "workload": name,
                    "requests": len(reqs),
                    "errors": len(errors),
                    "ours_wall_s": wall,
                    "B_wall_s_extrapolated": baseline,
                    "B_sampled_requests": sampled,
                    "speedup_vs_B": baseline / wall,
                    "prompt_tok_per_s": prompt_tokens / wall,
                    "output_tok_per_s": output_tokens / wall,
                    "mfu_prefill": 2 * params * computed / busy / flops if busy else 0.0,
                    "decode_bandwidth_share": steps * weight_bytes / busy / bandwidth if busy and steps else 0.0,
                    "mean_batch_rows": after["mean_batch_rows"],
                    "latency_p95_s": after["latency_seconds"]["p95"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        stats = requests.get(f"{url}/stats").json()
        results["peak_gpu_memory_gb"] = (stats["peak_gpu_memory_bytes"] or 0) / 1024**3
        results["parameters"] = params
        results["rows"] = rows
        results["server_stats"] = stats
        server.shutdown()
        service.stop()
    print(
        "| workload | requests | ours (s) | B (s, extrapolated) | speed-up | prompt tok/s | output tok/s | MFU | bandwidth share |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['workload']} | {r['requests']} | {r['ours_wall_s']:.2f} | {r['B_wall_s_extrapolated']:.1f} | "
            f"{r['speedup_vs_B']:.1f}× | {r['prompt_tok_per_s']:.0f} | {r['output_tok_per_s']:.0f} | "
            f"{r['mfu_prefill']:.0%} | {r['decode_bandwidth_share']:.0%} |"
        )
    print(
        f"peak GPU memory {results['peak_gpu_memory_gb']:.2f} GB within a {args.track_memory_gb:g} GB budget; {params / 1e9:.2f} B parameters"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
