"""What one request costs the model server besides the model: the HTTP threads' CPU time per request.

    python -m benchmarks.server_overhead --requests 1500 --threads 64

The server's HTTP threads and its model thread share one interpreter lock, so every millisecond a
request spends being parsed, tokenized and answered is a millisecond the model thread may wait to
launch its next kernels (on an H200, a multiple-choice run's batches took up to five times longer
while their answers went out than alone: docs/benchmarks.md). This sends HELM-shaped single-token
requests (few-shot prompts of three runs, a new connection each, as stock HELM's HTTP client does;
`--keep-alive`: one kept-alive connection a thread, as helm_fast's) from many threads to a tiny
random-init model on the CPU and prints one JSON line: requests per second, the HTTP threads' CPU per
request, the model thread's, the model process's (with `--single-process` the HTTP threads are in it
too; by default they are in a front process), the front process's (all of it: accepting, a thread a
connection, parsing, tokenizing, answering), and the sending process's (HELM's side).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks.engine_server import engine_server
from benchmarks.engine_speed import build_model
from evaluation.engine.helm_fast import KeepAlive

TASKS = [
    ("The following are multiple choice questions about units. ", "How many metres are in {n} kilometres?"),
    ("The following are multiple choice questions about dates. ", "Which day comes {n} days after Monday?"),
    ("The following are multiple choice questions about sums. ", "What is {n} plus {n}?"),
]


def prompt(task: int, n: int) -> str:
    instructions, question = TASKS[task]
    shots = "".join(
        f"Question: {question.format(n=k)}\nA. {k}\nB. {k + 1}\nC. {k + 2}\nAnswer: A\n\n" for k in range(8)
    )
    return instructions + shots + f"Question: {question.format(n=n)}\nA. 1\nB. 2\nC. 3\nAnswer:"


def body(text: str) -> dict:
    # The fields HELM's HTTPModelClient sends for a multiple-choice (joint) request.
    return {"prompt": text, "temperature": 1e-7, "num_return_sequences": 1, "max_new_tokens": 1, "top_p": 1,
            "echo_prompt": False, "top_k_per_token": 1, "stop_sequences": []}  # fmt: skip


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the server's front processes)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--single-process", action="store_true", help="HTTP threads in the model's process")
    parser.add_argument("--keep-alive", action="store_true", help="one connection a sending thread (helm_fast)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model", args.size)
        options = ["--device", "cpu", "--log-level", "WARNING"] + (["--single-process"] if args.single_process else [])
        with engine_server(model, *options, stdout=subprocess.DEVNULL) as (server, url):
            bodies = [body(prompt(i % 3, i)) for i in range(args.requests)]
            requests.post(url + "/process", json=bodies[0], timeout=600).raise_for_status()
            before = requests.get(url + "/stats", timeout=10).json()
            fronts = children(server.pid)
            cpu_before = process_cpu_seconds(server.pid)
            front_before = sum(process_cpu_seconds(p) for p in fronts)
            client = KeepAlive() if args.keep_alive else requests
            started, client_started = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(args.threads) as pool:
                codes = sorted(
                    {r.status_code for r in pool.map(lambda b: client.post(url + "/process", json=b), bodies)}
                )
            wall, client_cpu = time.perf_counter() - started, time.process_time() - client_started
            cpu = process_cpu_seconds(server.pid) - cpu_before
            front_cpu = sum(process_cpu_seconds(p) for p in fronts) - front_before
            after = requests.get(url + "/stats", timeout=10).json()
    n = args.requests

    def per_request_ms(key: str) -> float:
        return round(1000 * (after[key] - before[key]) / n, 3)

    print(json.dumps({
        "requests": n,
        "threads": args.threads,
        "single_process": args.single_process,
        "keep_alive": args.keep_alive,
        "status_codes": codes,
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 1),
        "batches": after["batches"] - before["batches"],
        "http_cpu_ms_per_request": per_request_ms("http_cpu_seconds"),
        "model_thread_cpu_ms_per_request": per_request_ms("model_cpu_seconds"),
        "model_process_cpu_ms_per_request": round(1000 * cpu / n, 3),
        "front_process_cpu_ms_per_request": round(1000 * front_cpu / n, 3) if fronts else None,
        "sender_cpu_ms_per_request": round(1000 * client_cpu / n, 3),
        "model_process_gc": after.get("gc"),  # its garbage collections since the warm-up (gc_clock.py)
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
