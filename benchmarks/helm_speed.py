"""Whole-evaluation speed (issue 8): the same model, suite and instances through three set-ups.

- A: stock `helm-run` with HELM's own local Hugging Face client (`--enable-local-huggingface-models`,
  HELM's default 4 request threads, sampling at temperature 1e-7 as that client does).
- B: a 2023-style server (one request at a time, `generate`; `benchmarks/baseline_server.py`) behind
  HELM's HTTP client, driven by `evaluation.engine.runner.evaluate(server_cmd=...)`.
- ours: `runner.evaluate` with the engine's batched server and many HELM threads, per track budget.
- warm: ours taking over the standby processes the run before left, as a GPU worker does; the run
  starts once their imports are done (a worker that was idle a moment, or whose previous evaluation
  lasted longer than the imports: ~15 s on the GPU box).
- fp32: ours serving the same checkpoint in fp32, no budget: the reference that shows how many bf16
  predictions, A's and ours alike, bf16 rounding alone changes.

    python -m benchmarks.helm_speed --size 1b --suites prefill-mc generation --modes ours A B \\
        --budgets 24 80 --instances prefill-mc=334 generation=10 --out var/helm-speed

Models are Llama-architecture, random init from a config, bf16 (built here; nothing downloaded).
Prints a markdown table and writes `results.json` and `table.md` to `--out` after every run: wall
time, speed-up against A, tokens/s, MFU for prefill-heavy runs, share of memory bandwidth for
decode-heavy runs (both against ceilings measured in the same invocation), peak GPU memory, and
how far each mode's predictions agree with A's (read from every run's `scenario_state.json`).
For the engine's modes `results.json` also holds the server's load and warm-up seconds and helm-run's
time per phase (adapt, execute, metrics, whole runs), summed over its processes.
`--fp32-check` adds a small fp32 model through A, B and ours: identical predictions, logprobs.
The GPU work of this process (ceilings, model build, decode micro-benchmark) runs in child
processes so that the memory each mode's own process holds is all the GPU holds while it runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from evaluation.engine import runner  # noqa: E402
from evaluation.engine.suites import get_suite  # noqa: E402

WARM_MODES = {"warm", "warm-single"}

# Metrics that score predictions (compared across modes); efficiency and logprob statistics differ by design.
SCORE_WORDS = ("exact_match", "f1", "rouge", "bleu", "accuracy", "correct", "bias", "toxic")


# ------------------------------------------------------------------------------ child-process work
def _child(args: list[str], timeout: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.helm_speed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_prepare(size: str, out: str, dtype: str, ceilings: bool) -> dict:
    """Build the model folder (initialised on the GPU) and measure the card's ceilings."""
    import torch

    from benchmarks import gpu_ceilings
    from benchmarks.engine_speed import build_model

    result: dict[str, Any] = {"cuda": torch.cuda.is_available()}
    if ceilings and torch.cuda.is_available():
        result["ceilings"] = gpu_ceilings.measure()
    started = time.perf_counter()
    path = Path(out)
    build_model(path, size)
    if dtype == "float32":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.save_pretrained(path, safe_serialization=True)
    result["build_seconds"] = time.perf_counter() - started
    return result


def child_decode_bench(model: str, rows: int, new_tokens: int, budget: float) -> dict:
    """One decode-heavy batch through the Hugging Face cache and through the static cache (graphs), the
    latter with fused decoder layers and with Hugging Face's."""
    import torch

    from evaluation.engine.loading import load_model
    from evaluation.engine.server import decode_step, fused, generation
    from evaluation.engine.server.generation import BatchGenerator, Row

    loaded = load_model(model, device="cuda" if torch.cuda.is_available() else "cpu", memory_budget_gb=budget)
    tok = loaded.tokenizer
    prompts = [f"Passage {i}: The meeting was moved to day {i}. Write about it." for i in range(rows)]
    result: dict[str, Any] = {"rows": rows, "new_tokens": new_tokens}
    generators = {mode: BatchGenerator(loaded.model, tok, decode=mode) for mode in ("dynamic", "static")}
    outputs = {}
    # The static path twice: its first batch pays for the graph capture, the second shows the steady state.
    # Then a static generator of its own (its own graphs) with Hugging Face's layers instead of fused.py's.
    # "static_separate": fused layers whose decode steps keep the separate q/k/v and gate/up products;
    # "static_host": the host chooses every token before the next step is launched.
    runs = [("dynamic", "dynamic"), ("static", "static"), ("static", "static_again")]
    runs += [("static_host", "static_host"), ("static_host", "static_host_again")]
    if generators["static"].fused:
        runs += [("static_unfused", "static_unfused"), ("static_unfused", "static_unfused_again")]
        runs += [("static_separate", "static_separate"), ("static_separate", "static_separate_again")]
    for mode, key in runs:
        if mode not in generators:
            generators[mode] = BatchGenerator(loaded.model, tok, decode="static")
        gen = generators[mode]
        # One generator's buffers at a time: a 7 B model's budget holds one static cache, not five.
        for other in generators.values():
            if other is not gen and other.static is not None:
                other.static.release()
        fused.switched_on = mode != "static_unfused"
        fused.joined_decode = mode != "static_separate"
        generation.queued_steps = mode != "static_host"
        batch = [Row(prompt_ids=tok(p)["input_ids"], max_new_tokens=new_tokens) for p in prompts]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        gen.generate(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        outputs.setdefault(mode, [r.tokens for r in batch])
        result[key] = {
            "seconds": seconds,
            "steps": gen.last_decode_steps,
            "ms_per_step": 1000 * seconds / max(gen.last_decode_steps, 1),
            "tokens_per_s": sum(len(r.tokens) for r in batch) / seconds,
        }
        if key == "static_again":
            result.update(_graph_replay(gen.static))
    fused.switched_on, fused.joined_decode, generation.queued_steps = True, True, True
    same = sum(a == b for a, b in zip(outputs["dynamic"], outputs["static"], strict=True))
    result["identical_rows_static_vs_dynamic"] = f"{same}/{rows}"
    result["fused"] = generators["static"].fused
    for other in ("static_unfused", "static_separate", "static_host"):
        if other in outputs:
            same = sum(a == b for a, b in zip(outputs[other], outputs["static"], strict=True))
            result[f"identical_rows_static_vs_{other}"] = f"{same}/{rows}"
    static = generators["static"].static
    result["graph_captures"] = static.captures if static is not None else 0
    # decode_step.py: the steps read the rotary table and end in one greedy kernel (ENGINE_LEAN_STEP).
    result["rotary_table"] = decode_step.table_applies(loaded.model.model.rotary_emb)
    result["lean_step"] = decode_step.lean and not fused._triton_failed
    result["static_mode"] = (
        "none" if static is None else ("graphs" if static.use_graphs and not static.graph_failed else "eager")
    )
    result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None
    if torch.cuda.is_available() and static is not None:
        from torch.profiler import ProfilerActivity, profile

        batch = [Row(prompt_ids=tok(p)["input_ids"], max_new_tokens=8) for p in prompts]
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generators["static"].generate(batch)
            torch.cuda.synchronize()
        result["profile_static_8_tokens"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14)
    del loaded, generators, static
    result["fp32_equality"] = fp32_equality("cuda" if torch.cuda.is_available() else "cpu")
    return result


def _graph_replay(static) -> dict:
    """The step's graph replayed back to back: the GPU's time a step, without the loop's work between
    steps (choosing tokens on the CPU); the column is put back before each replay."""
    import torch

    if not torch.cuda.is_available() or static is None or static.buffers is None or not static.buffers.graph:
        return {}
    b = static.buffers
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.inference_mode():  # the buffers are inference tensors
        column = b.column.clone()
        for _ in range(2):  # the first pass warms up, the second is timed
            start.record()
            for _step in range(20):
                b.column.copy_(column)
                b.graph.replay()
            end.record()
            torch.cuda.synchronize()
    return {"graph_replay_ms_per_step": start.elapsed_time(end) / 20}


def fp32_equality(device: str) -> dict:
    """A tiny fp32 Llama through the batched server path (static cache and graphs on a GPU) against
    one-at-a-time greedy `generate` and a plain forward's logprobs."""
    import tempfile

    import torch

    from benchmarks.engine_speed import FEW_SHOT
    from evaluation.engine.loading import load_model
    from evaluation.engine.server.generation import BatchGenerator, Row
    from evaluation.engine.tiny import build_tiny_model

    prompts = ["The quick brown fox", "Question: What is 2 plus 3? Answer:", "A", FEW_SHOT[:300] + "Q:"]
    prompts += [FEW_SHOT + "Question: What is 1 plus 1?", FEW_SHOT + "Question: When?"]
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        loaded = load_model(build_tiny_model(Path(tmp) / "llama", "llama"), device=device, dtype="float32")
        model, tok = loaded.model, loaded.tokenizer
        for max_new in (1, 24):
            rows = [Row(prompt_ids=tok(p)["input_ids"], max_new_tokens=max_new) for p in prompts]
            gen = BatchGenerator(model, tok)
            gen.generate(rows)
            same, worst = 0, 0.0
            for row in rows:
                ids = torch.tensor([row.prompt_ids], device=model.device)
                ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new,
                                     pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()  # fmt: skip
                eos = tok.eos_token_id
                ref = ref[: ref.index(eos)] if eos in ref else ref
                same += row.tokens == ref
                full = torch.tensor([row.prompt_ids + row.tokens], device=model.device)
                lp = torch.log_softmax(model(full).logits[0].float(), -1)
                n = len(row.prompt_ids)
                expected = [lp[n - 1 + i, t].item() for i, t in enumerate(row.tokens)]
                worst = max([worst] + [abs(a - b) for a, b in zip(row.logprobs, expected, strict=True)])
            mode = "none" if gen.static is None else ("graphs" if gen.static.use_graphs else "eager")
            report[f"max_new={max_new}"] = {"identical": f"{same}/{len(rows)}", "max_logprob_diff": worst,
                                            "static_decode": mode}  # fmt: skip
    return report


# ----------------------------------------------------------------------------------- GPU memory poll
class MemoryPoll:
    """Peak memory in use on GPU 0 (all processes, as nvidia-smi counts it) while a mode runs."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._read = self._reader()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used
        except Exception:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self._read()))
            except Exception:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def peak_gb(self) -> float | None:
        return self.peak / 1024**3 if self._read is not None else None


# ------------------------------------------------------------------------------------------- modes
def suite_variant(name: str, per_entry: int | None):
    suite = get_suite(name)
    if per_entry is None:
        return suite
    entries = tuple(replace(e, instances=per_entry) for e in suite.entries)
    return replace(suite, entries=entries, default_instances=per_entry)


def run_stock(model_dir: Path, suite, out: Path, time_limit: float, threads: int) -> dict:
    """Column A: stock helm-run, HELM's local Hugging Face client, nothing of ours but the plugin."""
    out.mkdir(parents=True, exist_ok=True)
    prod_env = out / "prod_env"
    prod_env.mkdir(exist_ok=True)
    conf = runner.write_conf(out / "run_entries.conf", suite.entries, None)
    model_name = f"huggingface/{model_dir.name}"
    cmd = [sys.executable, "-m", "helm.benchmark.run", "--conf-paths", str(conf), "--suite", "A"]
    cmd += ["-m", str(suite.default_instances), "-o", str(out / "helm"), "--local-path", str(prod_env)]
    cmd += ["-n", str(threads), "--models-to-run", model_name, "--disable-cache"]
    cmd += ["--enable-local-huggingface-models", str(model_dir), "--plugins", *suite.plugins]
    progress = runner.HelmProgress()
    started = time.monotonic()
    code = runner.run_helm(
        cmd, env=runner.helm_env(""), cwd=out, log_path=out / "helm.log", time_limit_s=time_limit, progress=progress
    )
    wall = time.monotonic() - started
    from evaluation.engine.result import ResultDocument

    doc = ResultDocument(suite=suite.name, track_memory_gb=0.0)
    runner._collect_runs(doc, suite, progress, out / "helm" / "runs" / "A")
    return {
        "wall_s": wall,
        "helm_s": wall,
        "returncode": code,
        "runs_dir": str(out / "helm" / "runs" / "A"),
        "records": [vars(r) for r in doc.records],
        "failed_runs": [r.name for r in doc.runs if r.status != "succeeded"],
    }


def run_engine(model_dir: Path, suite, out: Path, time_limit: float, threads: int, budget: float, dtype: str,
               server_cmd: list[str] | None = None, standby: bool = False, helm_processes: int = 1) -> dict:  # fmt: skip
    doc = runner.evaluate(
        standby=standby,
        helm_processes=helm_processes,
        model_dir=model_dir,
        suite=suite,
        track_memory_gb=budget,
        out_dir=out,
        threads=threads,
        time_limit_s=time_limit,
        dtype=dtype,
        server_cmd=server_cmd,
        helm_suite_id="eval",
        health_timeout_s=600,
    )
    stats = json.loads((out / "server_stats.json").read_text() or "{}")
    return {
        "wall_s": doc.efficiency.wall_seconds,
        "helm_s": doc.efficiency.helm_seconds,
        "server_startup": server_startup(out / "server.log"),
        "helm_phases": helm_phases(out),
        "runs_dir": str(out / "helm" / "runs" / "eval"),
        "records": [vars(r) for r in doc.records],
        "failed_runs": [r.name for r in doc.runs if r.status != "succeeded"],
        "server_stats": {k: v for k, v in stats.items() if k != "latencies"},
    }


PHASES = {  # helm-run's log blocks, by what the time went to
    "adapt": re.compile(r"Adapter\.adapt$"),
    "execute": re.compile(r"^Executor\.execute$"),
    "metrics": re.compile(r"^\d+ metrics$"),
    "run": re.compile(r"^Running \S+$"),
}


def helm_phases(out: Path) -> dict[str, float]:
    """Seconds per phase summed over every run of every helm-run log (prompts and the wait for the
    server are "adapt"; requests "execute"; the rest of "run" is writing HELM's files)."""
    totals = dict.fromkeys(PHASES, 0.0)
    for log in sorted(out.glob("helm*.log")):
        stack: list[str] = []
        for line in log.read_text(errors="replace").splitlines():
            m = runner._LOG_LINE.match(line)
            if not m:
                continue
            message = m.group("rest").strip()
            if message.endswith(" {"):
                stack.append(message[:-2])
            elif (c := runner._CLOSE.match(message)) and stack:
                name = stack.pop()
                seconds = float(c.group("seconds")) * (0.001 if c.group("unit") == "ms" else 1)
                for phase, pattern in PHASES.items():
                    if pattern.search(name):
                        totals[phase] += seconds
    return {k: round(v, 2) for k, v in totals.items()}


def server_startup(log_path: Path) -> dict | None:
    """Seconds the engine's server took to load and warm up, from the line it prints when ready: the
    last such line, since a mode run again in the same folder appends to the same server.log."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    for line in reversed(lines):
        if line.startswith("{") and '"status": "ready"' in line:
            return json.loads(line).get("startup")
    return None


# ------------------------------------------------------------------------------ reading HELM's output
def request_states(runs_dir: str) -> dict[tuple, dict]:
    """Every request of every run, keyed so that the same instance lines up across modes."""
    states: dict[tuple, dict] = {}
    for path in sorted(Path(runs_dir).glob("*/scenario_state.json")):
        run = path.parent.name.split(",model=")[0]
        for rs in json.loads(path.read_text()).get("request_states", []):
            perturbation = (rs["instance"].get("perturbation") or {}).get("name")
            key = (run, rs["instance"]["id"], perturbation, rs.get("train_trial_index", 0), rs.get("reference_index"),
                   rs.get("request_mode"))  # fmt: skip
            completion = ((rs.get("result") or {}).get("completions") or [{}])[0]
            states[key] = {
                "prompt": rs["request"]["prompt"],
                "text": completion.get("text"),
                "logprobs": [t.get("logprob", 0.0) for t in completion.get("tokens", [])],
                "tokens": len(completion.get("tokens", [])),
            }
    return states


def token_counts(states: dict[tuple, dict], tokenizer) -> dict[str, int]:
    prompts = [s["prompt"] for s in states.values()]
    prompt_tokens = [len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else []
    output = [s["tokens"] for s in states.values()]
    # KV-cache token reads of one-at-a-time decoding: each step reads the prompt and what came before.
    kv_reads = sum((o - 1) * p + (o - 1) * o // 2 for p, o in zip(prompt_tokens, output, strict=True) if o > 1)
    return {
        "requests": len(states),
        "prompt_tokens": sum(prompt_tokens),
        "output_tokens": sum(output),
        "kv_token_reads": kv_reads,
    }


def compare(ref: dict[tuple, dict], other: dict[tuple, dict]) -> dict:
    keys = [k for k in ref if k in other]
    same = [k for k in keys if ref[k]["text"] == other[k]["text"]]
    diffs = [
        abs(a - b)
        for k in same
        for a, b in zip(ref[k]["logprobs"], other[k]["logprobs"], strict=False)
        if a is not None and b is not None
    ]

    def leading(a: str | None, b: str | None) -> float:
        a, b = a or "", b or ""
        if a == b:
            return 1.0
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return n / max(len(a), len(b), 1)

    return {
        "compared": len(keys),
        "mean_leading_agreement": sum(leading(ref[k]["text"], other[k]["text"]) for k in keys) / len(keys)
        if keys
        else None,
        "missing": len(ref) - len(keys),
        "identical": len(same),
        "identical_share": len(same) / len(keys) if keys else None,
        "max_logprob_diff_identical": max(diffs) if diffs else None,
    }


def metric_diff(ref: list[dict], other: list[dict]) -> dict:
    def table(records):
        return {
            (r["run"].split(",model=")[0], r["metric"], r["split"], r["perturbation"]): r["value"]
            for r in records
            if r["count"] and r["value"] is not None and any(w in r["metric"] for w in SCORE_WORDS)
        }

    a, b = table(ref), table(other)
    diffs = {k: abs(a[k] - b[k]) for k in a if k in b}
    worst = max(diffs.items(), key=lambda kv: kv[1], default=(None, 0.0))
    return {
        "metrics_compared": len(diffs),
        "max_diff_points": 100 * worst[1],
        "worst_metric": "/".join(str(x) for x in worst[0]) if worst[0] else None,
    }


# -------------------------------------------------------------------------------------- efficiency
def efficiency(row: dict, counts: dict, ceilings: dict | None, params: int, weight_bytes: int, kv_bytes_token: int,
               heavy: str) -> dict:  # fmt: skip
    wall = row["wall_s"]
    stats = row.get("server_stats") or {}
    busy = stats.get("busy_seconds") or row["helm_s"]  # A and B: no busy counter, their HELM time
    eff = {
        "prompt_tok_per_s": counts["prompt_tokens"] / row["helm_s"],
        "output_tok_per_s": counts["output_tokens"] / row["helm_s"],
        "busy_s": busy,
    }
    if not ceilings:
        return eff
    if heavy == "prefill":
        computed = counts["prompt_tokens"] - int(stats.get("shared_prefix_tokens") or 0)
        eff["mfu"] = 2 * params * computed / busy / (ceilings["bf16_matmul_tflops"] * 1e12)
        eff["mfu_all_prompt_tokens"] = (
            2 * params * counts["prompt_tokens"] / busy / (ceilings["bf16_matmul_tflops"] * 1e12)
        )
        gpu = stats.get("packed_gpu_seconds")
        if gpu and stats.get("packed_gpu_batches") == stats.get("batches"):
            # Pipelined, every batch timed on the GPU: the rate while the GPU worked on them, which
            # says how much of the busy time it stood idle (not the target's figure: that is `mfu`).
            eff["gpu_s"] = gpu
            eff["mfu_gpu_time"] = 2 * params * computed / gpu / (ceilings["bf16_matmul_tflops"] * 1e12)
    else:
        steps = stats.get("decode_steps") or counts["output_tokens"]  # one-at-a-time: a step per token
        moved = steps * weight_bytes + counts["kv_token_reads"] * kv_bytes_token
        bandwidth = ceilings["copy_bandwidth_tb_s"] * 1e12
        eff["bandwidth_share"] = moved / busy / bandwidth
        # The decode loops' own steps: their time less loading their first rows and the rows that joined.
        start, joins = stats.get("decode_start_seconds") or 0.0, stats.get("decode_join_seconds") or 0.0
        steps_s = (stats.get("decode_seconds") or 0.0) - start - joins
        if steps_s > 0:
            eff["steps_s"] = steps_s
            eff["bandwidth_share_steps"] = moved / steps_s / bandwidth
    eff["wall_s"] = wall
    return eff


SHOWN_BATCHES = 12


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def timeline_summary(events: list[dict]) -> dict:
    """The server's timeline (ENGINE_TIMELINE=1) in milliseconds from the first request's arrival: when
    requests arrived (rows, by tenths of the spread), the batches in all (how many, their median rows,
    duration and gap before the next, and the share of the time from the first arrival to the last
    batch's end that they took), and the first SHOWN_BATCHES of them: start, rows, rows joined,
    duration and, for decode batches, the prefill, the start and each join."""
    arrivals = [e for e in events if e["kind"] == "arrive"]
    if not arrivals:
        return {}
    t0 = arrivals[0]["t"]

    def ms(t: float) -> float:
        return round(1000 * (t - t0), 1)

    times = sorted(ms(e["t"]) for e in arrivals for _ in range(e["rows"]))
    batches = []
    for e in events:
        if e["kind"] != "batch":
            continue
        entry = {"at": ms(e["began"]), "ms": round(ms(e["t"]) - ms(e["began"]), 1), "work": e["work"],
                 "rows": e["rows"], "joined": e["joined"], "steps": e["decode_steps"]}  # fmt: skip
        packed = e.get("packed")
        if packed:  # the host's part before the forward's launch, prefix fills and captures within it
            entry["launch"] = round(1000 * packed["launch"], 1)
            entry["steps"] = packed.get("steps") or []
            if packed["prefix_fills"]:
                entry["prefix_fills"] = [packed["prefix_fills"], round(1000 * packed["prefix_fill"], 1)]
            if packed["captures"]:
                entry["captures"] = packed["captures"]
        decode = e.get("decode") or {}
        for key in ("prefill", "prefill_launch", "start", "captures", "joins"):
            if key in decode:
                entry[key] = round(1000 * decode[key], 1)
        if decode.get("joined"):
            entry["each_join"] = [
                [round(1000 * x, 1) if i != 1 else x for i, x in enumerate(j)] for j in decode["joined"]
            ]
        batches.append(entry)
    gaps = [round(b["at"] - (a["at"] + a["ms"]), 1) for a, b in itertools.pairwise(batches)]
    span = max((b["at"] + b["ms"] for b in batches), default=0.0)
    return {
        "rows": len(times),
        "arrival_ms_by_tenth": [times[min(len(times) - 1, len(times) * q // 10)] for q in range(11)],
        "batch_count": len(batches),
        "median_rows": _median([b["rows"] for b in batches]),
        "median_ms": _median([b["ms"] for b in batches]),
        "median_gap_ms": _median(gaps),
        "busy_share": round(_covered(batches) / span, 3) if span > 0 else None,
        "median_launch_ms": _median([b["launch"] for b in batches if "launch" in b]),
        "prefix_fills_ms": [
            sum(b["prefix_fills"][0] for b in batches if "prefix_fills" in b),
            round(sum(b["prefix_fills"][1] for b in batches if "prefix_fills" in b), 1),
        ],
        "packed_captures": sum(b.get("captures", 0) for b in batches if "launch" in b),
        # Launches of 15 ms or more with no prefix prefilled: where in them the host waited.
        "slow_launches": [
            # "grouping": the launch's time before the graphs' steps (the rows grouped by prefix, packed)
            {
                "rows": b["rows"],
                "launch": b["launch"],
                "steps": b["steps"],
                "grouping": round(b["launch"] - sum(ms for _, ms in b["steps"]), 1),
            }  # fmt: skip
            for b in batches
            if b.get("launch", 0) >= 15 and "prefix_fills" not in b and b.get("steps")
        ][:SHOWN_BATCHES],
        "batches": [{k: v for k, v in b.items() if k != "steps"} for b in batches[:SHOWN_BATCHES]],
    }


def _covered(batches: list[dict]) -> float:
    """Milliseconds in which some batch ran: pipelined batches (ENGINE_PIPELINE) overlap."""
    covered, end = 0.0, float("-inf")
    for b in sorted(batches, key=lambda b: b["at"]):
        covered += max(0.0, b["at"] + b["ms"] - max(b["at"], end))
        end = max(end, b["at"] + b["ms"])
    return covered


def model_shape(model_dir: Path) -> tuple[int, int, int]:
    """(parameters, bytes of weights a decode step reads, KV-cache bytes per token) from the config and
    safetensors headers. A step reads every weight but the input embedding table, of which it reads a
    row a sequence (unless the table is also the head): counting the whole table overstated the
    bandwidth shares of sessions 9-17 by 6 % at 1.1 B and 2 % at 6.7 B (session 18)."""
    config = json.loads((model_dir / "config.json").read_text())
    params = runner.count_parameters(model_dir) or 0
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    elem = 4 if "32" in dtype else 2
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * elem
    unread = 0 if config.get("tie_word_embeddings") else config["vocab_size"] * config["hidden_size"]
    return params, (params - unread) * elem, kv


# ---------------------------------------------------------------------------------------------- main
def fmt(value, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def render(results: dict) -> str:
    lines = [
        "| model | suite | mode | budget (GB) | wall (s) | speed-up vs A | prompt tok/s | output tok/s | MFU | "
        "bandwidth share | peak GPU memory (GB) | same predictions as A | worst metric diff vs A (points) | "
        "same predictions as fp32 | server load + warm-up (s) | busy (s) | batches × mean rows | "
        "packed graph batches / captures | mean latency (s) | decode prefill / start / joins (count) / captures (s) |",
        "| --- " * 20 + "|",
    ]

    def same_as(agree: dict | None) -> str:
        share = (agree or {}).get("identical_share")
        return "" if share is None else f"{share:.1%} ({agree['identical']}/{agree['compared']})"

    for r in results["rows"]:
        e = r.get("efficiency", {})
        same = same_as(r.get("vs_A"))
        lines.append(
            f"| {r['model']} | {r['suite']} | {r['mode']} | {fmt(r.get('budget'), 'g')} | {r['wall_s']:.1f} | "
            f"{fmt(r.get('speedup_vs_A'), '.1f')}{'×' if r.get('speedup_vs_A') else ''} | "
            f"{fmt(e.get('prompt_tok_per_s'), ',.0f')} | {fmt(e.get('output_tok_per_s'), ',.0f')} | "
            f"{fmt(e.get('mfu'), '.0%')} | {fmt(e.get('bandwidth_share'), '.1%')}{steps_share(e)} | "
            f"{fmt(r.get('peak_gpu_gb'), '.1f')} | "
            f"{same} | "
            f"{fmt((r.get('metrics_vs_A') or {}).get('max_diff_points'), '.2f')} | "
            f"{same_as(r.get('vs_fp32'))} | "
            f"{'' if not r.get('server_startup') else '{load_s} + {warm_up_s}'.format(**r['server_startup'])} | "
            f"{server_columns(r.get('server_stats'))} |"
        )
    return "\n".join(lines)


def steps_share(eff: dict) -> str:
    share = eff.get("bandwidth_share_steps")
    return "" if share is None else f" (steps {share:.1%})"


def server_columns(stats: dict | None) -> str:
    """The server's busy time, its batches, the packed batches replayed as graphs and the captures they
    waited for, the mean request latency, and for decoding runs where the decode batches' time beside
    their steps went: the first rows' prefill, loading them, the joins, the graph captures (within the
    two before); empty for A and B, which have no such server."""
    if not stats:
        return " | | | |"
    latency = (stats.get("latency_seconds") or {}).get("mean")
    decode = ""
    decode_stats = stats.get("decode") or {}
    if stats.get("decode_seconds"):
        parts = [fmt(stats.get(f"decode_{name}_seconds"), ".2f") for name in ("prefill", "start", "join")]
        if stats.get("decode_joins") is not None:  # how many joins (servers since session 13)
            parts[-1] += f" ({stats['decode_joins']})"
        parts.append(fmt(decode_stats.get("graph_capture_seconds"), ".2f"))
        decode = " / ".join(parts)
        if decode_stats.get("rope_attend") is False:  # separate rotary and attention kernels
            decode += " (rope_attend off)"
        if decode_stats.get("folded_norms") is False:  # norm kernels in the steps (off, or no room for the copies)
            decode += " (norms kept)"
        lt = decode_stats.get("lt_products") or {}
        if lt:  # the step products with a cuBLASLt algorithm chosen by timing, of those timed
            decode += f" (Lt {sum(bool(e.get('algo')) for e in lt.values())}/{len(lt)})"
    return (
        f"{fmt(stats.get('busy_seconds'), '.2f')} | "
        f"{stats.get('batches', '–')} × {fmt(stats.get('mean_batch_rows'), '.0f')} | "
        f"{stats.get('packed_graph_batches', '–')} / {stats.get('packed_graph_captures', '–')} | "
        f"{fmt(latency, '.3f')} | {decode}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_prepare":
        print(json.dumps(child_prepare(argv[1], argv[2], argv[3], argv[4] == "1")))
        return 0
    if argv and argv[0] == "_ceilings":
        import torch

        from benchmarks import gpu_ceilings

        print(json.dumps(gpu_ceilings.measure() if torch.cuda.is_available() else None))
        return 0
    if argv and argv[0] == "_decode":
        print(json.dumps(child_decode_bench(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", help="tiny, 1b or 7b (benchmarks/engine_speed.py's shapes)")
    p.add_argument("--suites", nargs="*", default=["prefill-mc", "generation"], help="none: --decode-bench alone")
    p.add_argument(
        "--modes", nargs="+", default=["ours", "A", "B"],
        help="in the order to run them (ours, A, B, warm, warm-single, fp32); 'warm' is ours taking over standbys "
        "(imports done) left by the run before; 'warm-single' the same with the server's HTTP side in the model's "
        "process (--single-process); 'warm@N' warm with N HELM threads; 'fp32' is ours in fp32, the reference for "
        "bf16 agreement",
    )  # fmt: skip
    p.add_argument("--budgets", nargs="+", type=float, default=[24.0], help="track budgets (GB) for ours")
    p.add_argument("--instances", nargs="*", default=[], help="SUITE=N instances per run entry")
    p.add_argument("--threads", type=int, default=128, help="HELM threads for ours (over all its helm-run processes)")
    p.add_argument("--helm-processes", type=int, default=4, help="helm-run processes for ours, run entries split")
    p.add_argument("--baseline-threads", type=int, default=4, help="HELM threads for A and B (HELM's default)")
    p.add_argument("--fp32-check", nargs="*", default=None, help="SUITE=N for a tiny fp32 model through A, B, ours")
    p.add_argument("--decode-bench", type=int, nargs=2, metavar=("ROWS", "TOKENS"), help="decode micro-benchmark")
    p.add_argument("--deadline-s", type=float, default=3600.0, help="stop starting runs past this (from start)")
    p.add_argument("--out", default="var/helm-speed")
    p.add_argument("--model", help="use this model folder instead of building one")
    args = p.parse_args(argv)

    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    counts_per_suite = dict(item.split("=") for item in args.instances)
    results: dict[str, Any] = {"command": "python -m benchmarks.helm_speed " + " ".join(argv), "rows": []}
    results["hardware"] = vars(runner.detect_hardware())

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "table.md").write_text(render(results) + "\n")

    def left() -> float:
        return args.deadline_s - (time.monotonic() - started)

    model_dir = Path(args.model).resolve() if args.model else out / f"llama-{args.size}"
    if not args.model:
        prep = _child(["_prepare", args.size, str(model_dir), "bfloat16", "1"], timeout=max(left(), 60))
        results["ceilings"] = prep.get("ceilings")
        results["build_seconds"] = prep["build_seconds"]
        print(json.dumps({"prepared": prep}), flush=True)
    else:  # a given model: the card's ceilings still, so that MFU and bandwidth shares are computed
        results["ceilings"] = _child(["_ceilings"], timeout=max(left(), 60))
    save()
    if args.decode_bench:
        try:
            bench = _child(["_decode", str(model_dir), *map(str, args.decode_bench), "24"], timeout=max(left(), 60))
            results["decode_bench"] = {args.size: bench}
            print(json.dumps({"decode_bench": bench}), flush=True)
        except Exception as e:
            results["decode_bench_error"] = str(e)[-2000:]
        save()

    if WARM_MODES & {m.split("@")[0] for m in args.modes}:
        # As a GPU worker does when it boots: standbys import while the first (cold) evaluation runs,
        # so the warm run that follows finds them ready, as every later evaluation of a worker does.
        runner.start_standbys(args.helm_processes)
    ran_any = run_matrix(args, model_dir, args.size, "bfloat16", counts_per_suite, args.budgets, results, save, left)
    if args.fp32_check is not None and left() > 60:
        tiny = out / "llama-tiny-fp32"
        _child(["_prepare", "tiny", str(tiny), "float32", "0"], timeout=max(left(), 60))
        counts = dict(item.split("=") for item in args.fp32_check)
        run_matrix(args, tiny, "tiny-fp32", "float32", counts, [args.budgets[0]], results, save, left, fp32=True)
    save()
    print(render(results), flush=True)
    return 0 if ran_any or (not args.suites and "decode_bench" in results) else 1


def run_matrix(args, model_dir: Path, label: str, dtype: str, counts: dict, budgets: list[float], results: dict,
               save, left, fp32: bool = False) -> bool:  # fmt: skip
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    params, weight_bytes, kv_token = model_shape(model_dir)
    ceilings = results.get("ceilings")
    ran = False
    for suite_name in args.suites if not fp32 else list(counts):
        suite = suite_variant(suite_name, int(counts[suite_name]) if suite_name in counts else None)
        heavy = "prefill" if suite_name.startswith("prefill") else "decode"
        plan = []
        for mode in args.modes:
            if mode == "ours":
                plan += [("ours", b) for b in budgets]
            elif mode.split("@")[0] in WARM_MODES:
                plan.append((mode, budgets[0]))
            else:
                plan.append((mode, None))
        states: dict[str, dict] = {}
        rows: list[dict] = []
        for mode, budget in plan:
            if left() < 30:
                results.setdefault("skipped", []).append(f"{label} {suite_name} {mode} {budget or ''}: out of time")
                continue
            tag = f"{label}-{suite_name}-{mode}{'' if budget is None else f'-{budget:g}'}"
            run_out = Path(args.out).resolve() / tag
            limit = max(left() - 10, 20)
            print(f"== {tag} (time left {left():.0f} s)", flush=True)
            try:
                with MemoryPoll() as poll:
                    if mode == "A":
                        row = run_stock(model_dir, suite, run_out, limit, args.baseline_threads)
                    elif mode == "fp32":
                        # The reference for bf16 agreement: the same checkpoint served in fp32 (no budget:
                        # 7 B parameters in fp32 do not fit 24 GB), whose greedy choices have no bf16 rounding.
                        row = run_engine(
                            model_dir, suite, run_out, limit, args.threads, 0, "float32",
                            helm_processes=args.helm_processes,
                        )  # fmt: skip
                    elif mode == "B":
                        cmd = [sys.executable, "-m", "benchmarks.baseline_server", "--model", str(model_dir)]
                        cmd += ["--port", "{port}", "--dtype", dtype]
                        row = run_engine(
                            model_dir, suite, run_out, limit, args.baseline_threads, budget or 0, dtype, cmd
                        )
                    else:
                        # "warm": as a GPU worker between evaluations, a standby server and helm-run
                        # (imports done) wait; the previous engine run started them when it ended.
                        # "warm-single": the same with the server's HTTP side in the model's process.
                        # Only for this run: the modes after it (fp32 too) get the default layout.
                        # "warm@N": warm with N HELM threads instead of --threads.
                        base, _, threads = mode.partition("@")
                        if base in WARM_MODES and not runner.wait_standbys_ready(300):
                            print("!! standbys still importing after 300 s", flush=True)
                        os.environ["ENGINE_SINGLE_PROCESS"] = "1" if base == "warm-single" else ""
                        try:
                            row = run_engine(
                                model_dir, suite, run_out, limit, int(threads or args.threads), budget, dtype,
                                standby=base in WARM_MODES, helm_processes=args.helm_processes,
                            )  # fmt: skip
                        finally:
                            os.environ.pop("ENGINE_SINGLE_PROCESS", None)
                        if WARM_MODES & {m.split("@")[0] for m in args.modes}:
                            runner.start_standbys(args.helm_processes)  # ready for the warm run
            except Exception as e:  # one failed mode must not lose the others
                results.setdefault("errors", []).append(f"{tag}: {type(e).__name__}: {str(e)[:500]}")
                print(f"!! {tag} failed: {e}", flush=True)
                save()
                continue
            ran = True
            st = request_states(row.pop("runs_dir"))
            states[f"{mode}{budget or ''}"] = st
            row_counts = token_counts(st, tokenizer)
            record = {
                "model": label,
                "suite": suite_name,
                "mode": mode,
                "budget": budget,
                "instances_per_entry": suite.default_instances,
                "wall_s": row["wall_s"],
                "helm_s": row["helm_s"],
                "counts": row_counts,
                "failed_runs": row["failed_runs"],
                "peak_gpu_gb": poll.peak_gb,
                "server_stats": row.get("server_stats"),
                "server_startup": row.get("server_startup"),
                "helm_phases": row.get("helm_phases"),
                "efficiency": efficiency(row, row_counts, ceilings, params, weight_bytes, kv_token, heavy),
                "_records": row["records"],
            }
            if record["server_stats"] and record["server_stats"].get("peak_gpu_memory_bytes"):
                record["torch_peak_gb"] = record["server_stats"]["peak_gpu_memory_bytes"] / 1024**3
            rows.append(record)
            # Agreement with A (and with B, whose logprobs are not temperature-warped like A's, and with
            # fp32, which shows how far bf16 rounding alone moves A's and ours) for every row so far.
            for ref_mode in ("A", "B", "fp32"):
                ref = next((x for x in rows if x["mode"] == ref_mode), None)
                if ref is None:
                    continue
                for r in rows:
                    if r is ref:
                        continue
                    key = r["mode"] + (str(r["budget"]) if r["budget"] else "")
                    r[f"vs_{ref_mode}"] = compare(states[ref_mode], states[key])
                    if ref_mode == "A":
                        r["speedup_vs_A"] = ref["wall_s"] / r["wall_s"]
                        r["metrics_vs_A"] = metric_diff(ref["_records"], r["_records"])
            results["rows"] = [x for x in results["rows"] if not (x["model"] == label and x["suite"] == suite_name)]
            results["rows"] += [{k: v for k, v in x.items() if k != "_records"} for x in rows]
            keys = ("wall_s", "peak_gpu_gb", "torch_peak_gb", "efficiency", "vs_A", "server_startup")
            summary = {k: record.get(k) for k in keys}
            # The front process's CPU seconds (one interpreter for every request) beside HELM's time.
            stats = record["server_stats"] or {}
            summary["front_cpu_s"] = stats.get("front_cpu_seconds")
            summary["gc"] = stats.get("gc")  # the model process's collections: each stops its kernel launches
            summary["gpu_allocator"] = stats.get("gpu_allocator")  # cudaMalloc/cudaFree calls and retries
            # Packed batches: their seconds and the host's part before each forward was launched.
            if stats.get("packed_seconds"):
                summary["packed_s"] = stats["packed_seconds"]
                summary["packed_launch_s"] = stats.get("packed_launch_seconds")
                summary["packed_gpu_s"] = stats.get("packed_gpu_seconds")
            print(json.dumps({tag: summary}, default=str), flush=True)
            if (record["server_stats"] or {}).get("timeline"):
                print(json.dumps({tag: {"timeline": timeline_summary(record["server_stats"]["timeline"])}}), flush=True)
            save()
    return ran


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        runner.discard_standbys()
