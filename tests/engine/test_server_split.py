"""The command-line server's HTTP side in a forked front process (split.py): same answers as the
single-process server, merged counters, and neither process outlives the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS

ROOT = Path(__file__).resolve().parents[2]


def _start(model_dir: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evaluation.engine.server", "--device", "cpu", "--port", "0"]
        + ["--model", str(model_dir), "--dtype", "float32", "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=ROOT,
    )
    return proc, json.loads(proc.stdout.readline())


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True  # exited; its parent (the test's process' child) has not reaped it
        time.sleep(0.1)
    return False


@pytest.fixture
def servers(tiny_llama_dir):
    started = []

    def start(*extra: str, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
        proc, ready = _start(tiny_llama_dir, *extra, env=env)
        started.append(proc)
        return proc, ready

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


REQUESTS = [
    *({"prompt": p, "temperature": 1e-7, "max_new_tokens": 1, "top_k_per_token": 1} for p in FEW_SHOT_PROMPTS),
    *({"prompt": p, "temperature": 0, "max_new_tokens": 6, "stop_sequences": ["\n"]} for p in PROMPTS),
    {"prompt": PROMPTS[3], "temperature": 0, "max_new_tokens": 0, "echo_prompt": True},
    {"prompt": PROMPTS[1], "temperature": 0.8, "max_new_tokens": 5, "num_return_sequences": 3, "seed": 7},
]


def _answers(url: str) -> list[dict]:
    def post(body: dict) -> dict:
        answer = requests.post(f"{url}/process", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        data.pop("request_time")
        return data

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        return list(pool.map(post, REQUESTS))


def _assert_same(answers: list[dict], expected: list[dict]) -> None:
    """Same texts and tokens; logprobs equal up to float noise (which requests share a batch, and so
    its padded shape, differs from one run to the next)."""
    for got, want in zip(answers, expected, strict=True):
        assert len(got["completions"]) == len(want["completions"])
        for a, b in zip(got["completions"] + [got], want["completions"] + [want], strict=True):
            assert a["text"] == b["text"] and [t["text"] for t in a["tokens"]] == [t["text"] for t in b["tokens"]]
            assert all(abs(x["logprob"] - y["logprob"]) < 1e-4 for x, y in zip(a["tokens"], b["tokens"], strict=True))
            assert abs(a["logprob"] - b["logprob"]) < 1e-3


def test_the_front_process_answers_as_the_single_process_server(servers):
    split, split_ready = servers()
    single, single_ready = servers("--single-process")
    by_env, _ = servers(env={"ENGINE_SINGLE_PROCESS": "1"})  # how the speed benchmark asks for it
    assert len(_children(split.pid)) == 1 and _children(single.pid) == [] and _children(by_env.pid) == []
    assert {k: v for k, v in split_ready.items() if k not in ("url", "startup")} == {
        k: v for k, v in single_ready.items() if k not in ("url", "startup")
    }
    _assert_same(_answers(split_ready["url"]), _answers(single_ready["url"]))
    # The warm-up's seconds part by part (what a GPU's warm-up spends them on), within its whole.
    startup = split_ready["startup"]
    parts = startup["warm_up_parts"]
    assert {"forward", "prefix_merge"} <= parts.keys() and all(s >= 0 for s in parts.values())
    assert sum(parts.values()) <= startup["warm_up_s"] + 0.01

    stats = requests.get(f"{split_ready['url']}/stats", timeout=10).json()
    assert stats["requests"] == len(REQUESTS) and stats["latency_seconds"]["count"] == len(REQUESTS)
    assert stats["batches"] >= 1 and stats["busy_seconds"] > 0 and stats["model_cpu_seconds"] > 0
    assert stats["http_cpu_seconds"] > 0 and stats["prompt_tokens"] > 0 and stats["output_tokens"] > 0
    assert stats["front_cpu_seconds"] >= stats["http_cpu_seconds"]  # the whole front process's
    assert stats["limits"]["max_batch_size"] > 0 and stats["decode"]["mode"] == "dynamic"
    assert stats["decode"]["rope_attend"] is None  # no static decoder, no kernel
    tokens = requests.post(f"{split_ready['url']}/tokenize", json={"text": "The quick"}, timeout=10).json()["tokens"]
    text = requests.post(f"{split_ready['url']}/decode", json={"tokens": tokens}, timeout=10).json()["text"]
    assert text == "The quick"


def test_a_pipelined_server_answers_as_one_that_is_not(servers):
    """ENGINE_PIPELINE=1 on the CPU (auto: on a GPU only): each packed batch read after the next launch."""
    plain, plain_ready = servers()
    piped, piped_ready = servers(env={"ENGINE_PIPELINE": "1"})
    _assert_same(_answers(piped_ready["url"]), _answers(plain_ready["url"]))
    for ready, pipelined in ((piped_ready, True), (plain_ready, False)):
        stats = requests.get(f"{ready['url']}/stats", timeout=10).json()
        assert stats["pipelined"] is pipelined and stats["requests"] == len(REQUESTS)
        assert stats["packed_seconds"] > 0 and 0 < stats["busy_seconds"]
        assert stats["pace"]["gpu_seconds_per_token"] is None  # no GPU to time
        assert stats["gpu_allocator"] is None  # the driver's allocations: on a GPU only
        gc_stats = stats["gc"]  # the model process's collections since its warm-up
        assert len(gc_stats["collections"]) == 3 and 0 <= gc_stats["longest_seconds"] <= sum(gc_stats["seconds"])
        assert (stats["pace"]["launch_seconds"] is not None) is pipelined


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_front_process_ends_with_the_model_process(servers, sig):
    proc, ready = servers()
    (front,) = _children(proc.pid)
    assert requests.get(f"{ready['url']}/health", timeout=10).json()["status"] == "ok"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert _gone(front)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ready['url']}/health", timeout=5)


def test_the_model_process_ends_with_the_front_process(servers):
    proc, ready = servers()
    (front,) = _children(proc.pid)
    os.kill(front, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1  # not a clean stop: the runner must not take it for one


def test_two_fronts_answer_as_one_and_stats_count_both(servers):
    """Two front processes accept on the one socket; /stats, asked of either, counts every request."""
    proc, ready = servers("--fronts", "2")
    single, single_ready = servers("--single-process")
    assert len(_children(proc.pid)) == 2
    _assert_same(_answers(ready["url"]), _answers(single_ready["url"]))
    # Separate connections, many at once: both fronts accept some (the kernel hands each to one).
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "temperature": 0, "max_new_tokens": 1} for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda b: requests.post(f"{ready['url']}/process", json=b, timeout=120).status_code,
                              bodies))  # fmt: skip
    assert codes == [200] * 40
    for _ in range(3):  # whichever front answers
        stats = requests.get(f"{ready['url']}/stats", timeout=30).json()
        total = len(REQUESTS) + 40
        assert stats["fronts"] == 2 and stats["requests"] == total and stats["latency_seconds"]["count"] == total
        assert stats["front_cpu_seconds"] >= stats["http_cpu_seconds"] > 0 and stats["batches"] >= 1


def test_the_model_process_ends_with_either_of_two_fronts(servers):
    proc, ready = servers("--fronts", "2")
    first, second = _children(proc.pid)
    os.kill(second, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert _gone(first)


def test_the_front_never_touches_cuda_for_its_counters(tiny_llama_dir, monkeypatch):
    """On a GPU box a CUDA call in the front would give it a CUDA context of its own: GPU memory
    outside the track's budget."""
    import threading
    from multiprocessing import Pipe

    import torch

    from evaluation.engine.loading import load_model
    from evaluation.engine.server.app import model_facts
    from evaluation.engine.server.split import RemoteService, merge_counts

    loaded = load_model(tiny_llama_dir, device="cpu", dtype="float32")
    facts = {**model_facts(loaded), "device": "cuda"}

    def forbidden(*args, **kwargs):
        raise AssertionError("the front called CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", forbidden)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", forbidden)
    front_end, model_end = Pipe()

    def model_side():
        kind, key = model_end.recv()  # /stats: the model asks the front for its counts
        model_end.send(("counts", 9))
        _, mine, counts = model_end.recv()
        assert mine == 9 and counts["requests"] == 0 and counts["front_cpu_seconds"] > 0
        model_end.send((key, {"batches": 3, "peak_gpu_memory_bytes": 123, **merge_counts([counts])}))

    threading.Thread(target=model_side, daemon=True).start()
    ready = {"tokenizer": loaded.tokenizer, "facts": facts, "seed": 0, "startup": None}
    service = RemoteService(front_end, ready, on_lost=lambda: None)
    stats = service.stats_snapshot()
    assert stats["batches"] == 3 and stats["peak_gpu_memory_bytes"] == 123 and stats["requests"] == 0


def test_the_fronts_setting():
    from evaluation.engine.server import _fronts_setting, build_parser

    assert [_fronts_setting(v, cores=2) for v in (None, "", "2", "0", "-3", "two")] == [1, 1, 2, 1, 1, 1]
    # Unset: two fronts on a box with cores to spare (a GPU box), one on a small one; a setting wins.
    assert [_fronts_setting(None, cores=c) for c in (1, 4, 8, 16)] == [1, 1, 2, 2]
    assert _fronts_setting("1", cores=16) == 1 and _fronts_setting("3", cores=2) == 3
    assert build_parser().parse_args(["--model", "m", "--fronts", "3"]).fronts == 3
