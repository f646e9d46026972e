"""Command line of the engine: exactly what the portal's GPU workers run.

    python -m evaluation.engine evaluate --model DIR --suite offline-open --track-memory-gb 24 --out DIR
    python -m evaluation.engine serve --model DIR --port 8080
    python -m evaluation.engine list-suites

`evaluate` exits 0 when every run succeeded, 3 when some runs failed (the document says which),
2 on an engine error (one JSON line `{"error": {...}}` on stderr) and 64 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK = 0
EXIT_ENGINE_ERROR = 2
EXIT_PARTIAL = 3
EXIT_USAGE = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.engine", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="serve a model and run a HELM suite against it")
    ev.add_argument("--model", required=True, help="model folder (full weights, or a LoRA adapter)")
    ev.add_argument("--adapter-base", help="base model folder when --model holds an adapter")
    ev.add_argument("--suite", required=True, help="suite name (see list-suites)")
    ev.add_argument("--track-memory-gb", required=True, type=float, help="GPU memory budget of the track")
    ev.add_argument("--track-name", help="track name used in messages, e.g. 4090")
    ev.add_argument("--out", required=True, help="output folder: result.json, logs, HELM output")
    ev.add_argument("--threads", type=int, default=128, help="HELM's concurrent requests (-n); the server batches them")
    ev.add_argument(
        "--helm-processes",
        type=int,
        default=4,
        help="helm-run processes; the suite's run entries are split between them",
    )
    ev.add_argument("--time-limit", type=float, help="seconds before helm-run is stopped (default: the suite's)")
    ev.add_argument("--max-eval-instances", type=int, help="cap the instances of every run")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ev.add_argument("--health-timeout", type=float, default=300.0, help="seconds to wait for the model server")
    ev.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    sub.add_parser("serve", help="run the model server alone (arguments as the server's)", add_help=False)

    ls = sub.add_parser("list-suites", help="the named suites")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _print_progress(payload: dict[str, Any]) -> None:
    event = payload.get("event")
    if event in ("run_started", "run_finished", "run_failed", "planned"):
        done, total = payload.get("runs_done"), payload.get("runs_total") or "?"
        run = payload.get("current_run") or ""
        print(f"[{done}/{total}] {event.replace('_', ' ')} {run}".rstrip(), file=sys.stderr, flush=True)
    elif event in ("server_starting", "server_ready", "finished"):
        print(f"{event.replace('_', ' ')} {payload.get('status', '')}".rstrip(), file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.engine.errors import EngineError
    from evaluation.engine.runner import evaluate
    from evaluation.engine.suites import UnknownSuite, get_suite

    try:
        get_suite(args.suite)
    except UnknownSuite as exc:
        print(exc.args[0], file=sys.stderr)
        return EXIT_USAGE
    try:
        doc = evaluate(
            model_dir=args.model,
            adapter_base=args.adapter_base,
            suite=args.suite,
            track_memory_gb=args.track_memory_gb,
            track_name=args.track_name,
            out_dir=args.out,
            threads=args.threads,
            helm_processes=args.helm_processes,
            time_limit_s=args.time_limit,
            max_eval_instances=args.max_eval_instances,
            device=args.device,
            dtype=args.dtype,
            health_timeout_s=args.health_timeout,
            on_progress=None if args.quiet else _print_progress,
        )
    except EngineError as exc:
        info = exc.to_dict()
        info["log_tail"] = info["log_tail"][-4000:]
        print(json.dumps({"error": info}), file=sys.stderr)
        return EXIT_ENGINE_ERROR
    eff = doc.efficiency
    print(f"suite {doc.suite}: {doc.status}; result in {args.out}/result.json")
    for run in doc.runs:
        main = next(
            (
                r.value
                for r in doc.records
                if r.run == run.name and r.metric == run.main_metric and r.perturbation is None and r.split == "test"
            ),
            None,
        )
        shown = f"{main:.3f}" if isinstance(main, float) else "-"
        print(f"  {run.status:9} {run.scenario:28} {run.main_metric}={shown}  {run.error or ''}".rstrip())
    print(
        f"  wall {eff.wall_seconds:.1f} s, {eff.request_count} requests, {eff.output_tokens} output tokens "
        f"({eff.output_tokens_per_second:.1f}/s), peak GPU memory {eff.peak_gpu_memory_bytes or 0} bytes"
    )
    return EXIT_OK if doc.status == "succeeded" else EXIT_PARTIAL


def _list_suites(args: argparse.Namespace) -> int:
    from evaluation.engine.suites import list_suites

    suites = list_suites()
    if args.json:
        print(json.dumps([s.to_dict() for s in suites], indent=2))
        return EXIT_OK
    for s in suites:
        total = sum(e.instances or s.default_instances for e in s.entries)
        flags = ", ".join(f for f, on in (("offline", s.offline), ("hidden", s.hidden)) if on)
        print(f"{s.name:24} {len(s.entries):3} entries {total:6} instances  {flags:16} {s.description}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from evaluation.engine.server import main as serve_main

        return serve_main(argv[1:]) or 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if args.command == "evaluate":
        return _evaluate(args)
    return _list_suites(args)
