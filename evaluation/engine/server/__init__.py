"""The model server: a submission behind the HTTP API that HELM's HTTPModelClient speaks.

`python -m evaluation.engine.server --model DIR --port P --track-memory-gb G` (see `main`), or
`serve(...)` in-process (tests). Loading errors exit non-zero after one JSON line on stderr:
{"error": {"type", "kind", "message"}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from evaluation.engine.errors import EngineError, ModelLoadError

log = logging.getLogger("evaluation.engine.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.engine.server", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder (full weights, or a LoRA adapter)")
    p.add_argument("--adapter-base", help="base model folder when --model holds a LoRA adapter")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed on stdout)")
    p.add_argument(
        "--listen-fd", type=int, default=None,
        help="serve on this inherited, already listening socket instead of binding --host/--port",
    )  # fmt: skip
    p.add_argument("--track-memory-gb", type=float, default=None, help="GPU memory budget of the track")
    p.add_argument("--track-name", default=None, help="track name for messages, e.g. 4090")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="default sampling seed when a request has none")
    p.add_argument("--no-prefix-sharing", action="store_true", help="prefill shared few-shot prefixes per row")
    p.add_argument(
        "--decode",
        default=os.environ.get("ENGINE_DECODE", "auto"),
        choices=["auto", "static", "dynamic"],
        help="decode loop: auto (static cache with CUDA graphs on a GPU), static, or dynamic (Hugging Face "
        "cache); also ENGINE_DECODE",
    )
    p.add_argument(
        "--no-joins", action="store_true", default=os.environ.get("ENGINE_JOINS") == "0",
        help="no continuous batching: rows arriving while a static decode batch runs wait for it to end "
        "instead of joining it; also ENGINE_JOINS=0",
    )  # fmt: skip
    p.add_argument(
        "--single-process", action="store_true", default=os.environ.get("ENGINE_SINGLE_PROCESS") == "1",
        help="serve HTTP from the model's process (by default a forked front process does: split.py); "
        "also ENGINE_SINGLE_PROCESS=1",
    )  # fmt: skip
    p.add_argument(
        "--fronts", type=int, default=_fronts_setting(os.environ.get("ENGINE_FRONTS")),
        help="front processes accepting HTTP on the one socket, each with its pipe to the model process "
        "(split.py; default 2 with 8 or more cores, else 1); also ENGINE_FRONTS",
    )  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    return p


def default_fronts(cores: int | None) -> int:
    """Two fronts where the box has cores for them (a GPU box: on an H100 host two fronts gave
    multiple-choice batches of 49-55 rows against 31-39 and 42-43 % of the matrix rate against 37-40 %,
    three no more than two: docs/benchmarks.md, session 18); one on a small box, where a second
    interpreter would take a core from the model or HELM."""
    return 2 if (cores or 1) >= 8 else 1


def _fronts_setting(value: str | None, cores: int | None = None) -> int:
    """ENGINE_FRONTS as a count of front processes: unset gives `default_fronts`; not a number or below
    1 gives 1."""
    if not value:
        return default_fronts(os.cpu_count() if cores is None else cores)
    try:
        return max(1, int(value))
    except ValueError:
        log.warning("ENGINE_FRONTS=%r is not a number: one front process", value)
        return 1


def create_service(args: argparse.Namespace):
    """Load the model and build the service (raises EngineError subclasses on failure)."""
    started = time.monotonic()
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import folded, fused
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import default_limits

    loaded = load_model(
        args.model,
        adapter_base=args.adapter_base,
        device=args.device,
        dtype=args.dtype,
        memory_budget_gb=args.track_memory_gb,
        track_name=args.track_name,
    )
    # The fused layers and the decode steps' folded copies first: the limits leave the copies room.
    if fused.install(loaded.model):
        folded.fold(loaded.model, loaded.budget_bytes)
    limits = default_limits(loaded.model, loaded.device, loaded.budget_bytes)
    if args.max_batch_size:
        limits.max_batch_size = args.max_batch_size
    if args.max_batch_tokens:
        limits.max_batch_tokens = args.max_batch_tokens
    service = ModelService(
        loaded, limits, seed=args.seed, prefix_sharing=not args.no_prefix_sharing, decode=args.decode,
        joins=not args.no_joins,
    )  # fmt: skip
    loaded_at = time.monotonic()
    service.warm_up()
    from evaluation.engine import heap

    heap.freeze(collect=False)  # imports and model stay for the process's life: no full collection walks them
    # Where the start-up time goes (reported by /health; the speed benchmark prints it).
    service.startup = {"load_s": round(loaded_at - started, 2), "warm_up_s": round(time.monotonic() - loaded_at, 2)}
    log.info("loaded in %.1f s (imports included), warmed up in %.1f s", service.startup["load_s"],
             service.startup["warm_up_s"])  # fmt: skip
    service.startup["warm_up_parts"] = dict(service.generator.warm_up_seconds)
    return service


def serve(argv: list[str]):
    """Load and start serving in background threads; returns the (started) HTTP server.

    The caller stops it with `server.shutdown(); server.service.stop()`.
    """
    from evaluation.engine.server.app import EngineHTTPServer

    args = build_parser().parse_args(argv)
    service = create_service(args)
    server = EngineHTTPServer((args.host, args.port), service)
    service.start()
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def _report(error: EngineError) -> None:
    payload = {"type": type(error).__name__, "kind": error.kind, "message": error.message}
    sys.stderr.flush()
    print(json.dumps({"error": payload}), file=sys.stderr, flush=True)


def _listening_socket(args: argparse.Namespace):
    import socket

    if args.listen_fd is not None:
        return socket.socket(fileno=args.listen_fd)
    return socket.create_server((args.host, args.port), backlog=512)  # HELM's threads connect all at once


def _exit_on_signals() -> None:
    def stop(signum, frame):
        # Nothing to save, and an orderly shutdown (the HTTP loop's poll, the scheduler thread, then
        # torch's and CUDA's teardown) takes seconds that every evaluation would wait for.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _serve_split(service, fronts, address: tuple[str, int]) -> int:
    from evaluation.engine.server.split import serve_model

    service.start()
    host, port = address
    print(json.dumps({**service.health(), "status": "ready", "url": f"http://{host}:{port}"}), flush=True)
    _exit_on_signals()
    serve_model(service, fronts)  # returns only if a front process is gone: a stop ends this one first
    log.error("an HTTP front process ended; stopping")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    front = None
    if not args.single_process:
        try:
            listen = _listening_socket(args)
        except OSError as e:
            _report(EngineError(f"cannot listen on {args.host}:{args.port}: {e}"))
            return 3
        address = listen.getsockname()[:2]
        from evaluation.engine.server.split import fork_fronts

        front = fork_fronts(listen, args.fronts)  # before loading: no CUDA or threads to inherit
    try:
        service = create_service(args)
    except EngineError as e:
        _report(e)
        return 2
    except Exception as e:  # anything else while loading is still the weights' fault as far as we can tell
        log.exception("loading failed")
        _report(ModelLoadError(f"{type(e).__name__}: {e}"))
        return 2
    if front is not None:
        return _serve_split(service, front, address)

    from evaluation.engine.server.app import EngineHTTPServer

    try:
        server = EngineHTTPServer((args.host, args.port), service, listen_fd=args.listen_fd)
    except OSError as e:
        _report(EngineError(f"cannot listen on {args.host}:{args.port}: {e}"))
        return 3
    service.start()
    host, port = server.server_address[:2]
    print(json.dumps({**service.health(), "status": "ready", "url": f"http://{host}:{port}"}), flush=True)

    _exit_on_signals()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        service.stop()
    return 0
