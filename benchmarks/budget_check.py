"""Does a track's memory budget hold for the whole server process, CUDA context included?

    python -m benchmarks.budget_check --size 1b --track-memory-gb 6

Builds a random-init Llama model (bf16), starts `evaluation.engine.server` under the budget, loads it with
concurrent long prompts and generations, and prints one JSON line: the server's own peak (torch) and the
process's GPU memory as the driver reports it (nvidia-smi), against the budget.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks.engine_server import engine_server
from benchmarks.engine_speed import build_model


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def process_gpu_mib(pids: set[int]) -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    ).stdout
    return sum(int(mem) for p, mem in (line.split(", ") for line in out.strip().splitlines()) if int(p) in pids)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1b")
    parser.add_argument("--track-memory-gb", type=float, default=6)
    parser.add_argument("--requests", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", args.size)
        options = ["--track-memory-gb", str(args.track_memory_gb), "--device", "cuda"]
        with engine_server(model, *options) as (server, url):
            prompt = "Question: What is 2 plus 3? A. 5 B. 6 C. 7 D. 8\nAnswer: A\n\n" * 60
            body = {"prompt": prompt, "temperature": 1e-7, "num_return_sequences": 1, "max_new_tokens": 64,
                    "top_p": 1, "echo_prompt": False, "top_k_per_token": 1, "stop_sequences": []}  # fmt: skip
            peak_smi = 0
            with ThreadPoolExecutor(64) as pool:
                futures = [pool.submit(requests.post, url + "/process", json=body) for _ in range(args.requests)]
                while not all(f.done() for f in futures):
                    # The server and its HTTP front process (which must hold none).
                    peak_smi = max(peak_smi, process_gpu_mib({server.pid, *children(server.pid)}))
                    time.sleep(0.05)
                codes = sorted({f.result().status_code for f in futures})
            stats = requests.get(url + "/stats", timeout=10).json()
            result = {
                "size": args.size,
                "budget_gib": args.track_memory_gb,
                "status_codes": codes,
                "torch_peak_allocated_gib": round(stats["peak_gpu_memory_bytes"] / 1024**3, 2),
                "torch_peak_reserved_gib": round(stats["peak_gpu_memory_reserved_bytes"] / 1024**3, 2),
                "process_peak_nvidia_smi_gib": round(peak_smi / 1024, 2),
                "out_of_memory_splits": stats.get("out_of_memory_splits"),
            }
            result["within_budget"] = result["process_peak_nvidia_smi_gib"] <= args.track_memory_gb
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
