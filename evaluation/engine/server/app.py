"""The HTTP side: the endpoints HELM's HTTPModelClient and HTTPModelTokenizer call, plus /health and
/stats for the runner. Request threads parse and tokenize; the scheduler's thread runs the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from evaluation.engine.loading import LoadedModel
from evaluation.engine.server import decode_attention, folded
from evaluation.engine.server.batching import Limits, Scheduler
from evaluation.engine.server.gc_clock import GcClock
from evaluation.engine.server.generation import BatchGenerator, Row
from evaluation.engine.server.pipeline import Pace, pipelining
from evaluation.engine.server.stats import Stats

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_RETURN_SEQUENCES = 64


class BadRequest(Exception):
    pass


class RequestFailed(Exception):
    def __init__(self, status: int, error_type: str, kind: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.kind, self.message = status, error_type, kind, message


def _error_body(error_type: str, kind: str, message: str) -> dict:
    return {"error": {"type": error_type, "kind": kind, "message": message}}


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return float(value)


def _int(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise BadRequest(f"{name} must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return int(value)


def row_seed(seed: int, index: int, prompt: str) -> int:
    """A seed per sequence that depends only on the request, never on what shares its batch."""
    digest = hashlib.sha256(f"{seed}|{index}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def model_facts(loaded: LoadedModel) -> dict:
    """What the endpoints say about the model, without the model (the HTTP side may be another process)."""
    return {
        "name": loaded.name,
        "parameters": loaded.parameters,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "max_positions": loaded.max_positions,
        "estimated_bytes": loaded.estimated_bytes,
        "budget_bytes": loaded.budget_bytes,
        "vocab_size": max(len(loaded.tokenizer), getattr(loaded.model.config, "vocab_size", 0) or 0),
    }


HEALTH_FACTS = ("parameters", "device", "dtype", "max_positions", "estimated_bytes", "budget_bytes")


class Frontend:
    """The endpoints' work outside the model: parsing, tokenizing, answering, the request counters.
    `submit(rows)` runs rows through the model and returns when they are done."""

    def __init__(self, tokenizer: Any, facts: dict, *, seed: int = 0):
        self.tokenizer = tokenizer
        self.facts = facts
        self.seed = seed
        self.stats = Stats(device=facts["device"])
        self.startup: dict[str, Any] | None = None  # seconds to load and warm up, set by the launcher
        fallback = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None]
        self.empty_prompt_ids = fallback[:1] or [0]

    def submit(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def stats_snapshot(self) -> dict:
        raise NotImplementedError

    def health(self) -> dict:
        facts = self.facts
        return {
            "status": "ok",
            "model": facts["name"],
            **{key: facts[key] for key in HEALTH_FACTS},
            "startup": self.startup,
        }

    # --- /tokenize and /decode -----------------------------------------------------------------

    def tokenize(self, body: dict) -> dict:
        started = time.perf_counter()
        text = body.get("text")
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        max_length = body.get("max_length")
        if body.get("truncation") and isinstance(max_length, int) and max_length >= 0:
            ids = ids[:max_length]
        return {"tokens": ids, "request_time": time.perf_counter() - started}

    def decode(self, body: dict) -> dict:
        started = time.perf_counter()
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest("tokens must be a list of integers")
        vocab = self.facts["vocab_size"]
        if any(t < 0 or t >= vocab for t in tokens):
            raise BadRequest(f"token ids must be between 0 and {vocab - 1}")
        return {"text": self.tokenizer.decode(tokens), "request_time": time.perf_counter() - started}

    # --- /process ------------------------------------------------------------------------------

    def _parse_process(self, body: dict) -> tuple[str, list[Row], int]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        temperature = _number(body, "temperature", 1.0, 0.0, 100.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        max_new = _int(body, "max_new_tokens", 100, 0, 1 << 20)
        n = _int(body, "num_return_sequences", 1, 1, MAX_RETURN_SEQUENCES)
        echo = body.get("echo_prompt", False)
        if not isinstance(echo, bool):
            raise BadRequest("echo_prompt must be true or false")
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences must be a list of strings")
        seed = _int(body, "seed", self.seed, -(1 << 62), 1 << 62)
        if top_p <= 0.0:
            top_p = 1.0

        ids = self.tokenizer(prompt)["input_ids"] or list(self.empty_prompt_ids)
        limit = self.facts["max_positions"]
        if limit:
            # Positions past the model's table would crash or silently wrap: keep the end of the prompt.
            if len(ids) > limit - min(max_new, 1):
                ids = ids[-(limit - min(max_new, 1)) :]
                self.stats.add("truncated_prompts")
            max_new = min(max_new, limit - len(ids))
        greedy = temperature <= 1e-5
        sequences = 1 if greedy else n
        rows = []
        for i in range(sequences):
            generator = None
            seed_i = row_seed(seed, i, prompt)
            if not greedy:
                generator = torch.Generator().manual_seed(seed_i)
            rows.append(
                Row(
                    prompt_ids=list(ids),
                    max_new_tokens=max_new,
                    temperature=temperature,
                    top_p=top_p,
                    echo=echo,
                    stop_sequences=[s for s in stops if s],
                    generator=generator,
                    seed=seed_i,
                )
            )
        return prompt, rows, n

    def _truncate_at_stop(self, row: Row) -> tuple[str, list[int], list[float]]:
        text = self.tokenizer.decode(row.tokens)
        cuts = [text.find(s) for s in row.stop_sequences if s in text]
        if not cuts:
            return text, row.tokens, row.logprobs
        cut = min(cuts)
        # Keep the tokens wholly before the stop sequence (tokens can only be cut at their boundaries).
        keep = 0
        while keep < len(row.tokens) and len(self.tokenizer.decode(row.tokens[: keep + 1])) <= cut:
            keep += 1
        return text[:cut], row.tokens[:keep], row.logprobs[:keep]

    def _completion(self, prompt: str, row: Row) -> dict:
        text, tokens, logprobs = self._truncate_at_stop(row)
        out_tokens = []
        if row.echo:
            prompt_lp = row.prompt_logprobs or [0.0] * len(row.prompt_ids)
            out_tokens += [
                {"text": self.tokenizer.decode([t]), "logprob": lp}
                for t, lp in zip(row.prompt_ids, prompt_lp, strict=True)
            ]
            text = prompt + text
        out_tokens += [
            {"text": self.tokenizer.decode([t]), "logprob": lp} for t, lp in zip(tokens, logprobs, strict=True)
        ]
        return {
            "text": text,
            "tokens": out_tokens,
            "logprob": sum(t["logprob"] for t in out_tokens),
            "finish_reason": row.finish_reason,
        }

    def process(self, body: dict) -> dict:
        started = time.perf_counter()
        prompt, rows, n = self._parse_process(body)
        ok = False
        try:
            self.submit(rows)
            errors = [r.error for r in rows if r.error]
            if errors:
                if any("NaN" in e for e in errors):
                    self.stats.add("non_finite")
                    raise RequestFailed(422, "NonFiniteOutput", "user", errors[0])
                if any(r.finish_reason == "out_of_memory" for r in rows):
                    raise RequestFailed(503, "ModelTooLarge", "user", errors[0])
                raise RequestFailed(500, "InternalError", "infra", errors[0])
            completions = [self._completion(prompt, r) for r in rows]
            # Greedy decoding gives the same sequence every time: compute it once, return it n times.
            completions = (completions * n)[:n]
            ok = True
        finally:
            self.stats.record_request(
                latency=time.perf_counter() - started,
                prompt_tokens=len(rows[0].prompt_ids) * len(rows),
                output_tokens=sum(len(r.tokens) for r in rows),
                ok=ok,
            )
        first = completions[0]
        return {
            "text": first["text"],
            "tokens": first["tokens"],
            "logprob": first["logprob"],
            "completions": completions,
            "request_time": time.perf_counter() - started,
        }


class ModelService(Frontend):
    """The model and its scheduler, with the endpoints' work in the same process."""

    def __init__(
        self,
        loaded: LoadedModel,
        limits: Limits,
        *,
        seed: int = 0,
        prefix_sharing: bool = True,
        decode: str = "auto",
        joins: bool = True,
    ):
        super().__init__(loaded.tokenizer, model_facts(loaded), seed=seed)
        self.loaded = loaded
        self.generator = BatchGenerator(
            loaded.model,
            loaded.tokenizer,
            prefix_sharing=prefix_sharing,
            decode=decode,
            prefix_store_bytes=limits.prefix_store_bytes,
        )
        message = "the model ran out of GPU memory on a single request"
        if loaded.budget_bytes:
            message += f" within its budget of {loaded.budget_bytes / 1024**3:g} GB"
        self.scheduler = Scheduler(
            self.generator,
            self.stats,
            limits,
            out_of_memory_message=message,
            joins=joins,
            pipelined=pipelining(str(self.generator.device)),
        )
        self.gc_clock = GcClock()  # started after the warm-up

    def submit(self, rows: list[Row]) -> None:
        self.scheduler.submit(rows)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.gc_clock.stop()

    def warm_up(self) -> None:
        """One tiny forward so the first real request does not pay for kernel set-up. One token only:
        a decode batch would capture a CUDA graph for one row, a shape later decode batches rarely
        have, while every evaluation waits for it; the decode steps' kernels and their capture stream
        are warmed without a graph, and the standing decode shape's graph is captured, where the
        limits leave room for one (prepare_graphs, static_decode.standing_columns)."""
        self.generator.time_warm_up("forward", self.scheduler.run, [Row(prompt_ids=list(self.empty_prompt_ids),
                                                                        max_new_tokens=1)])  # fmt: skip
        # While HELM starts, not in the first batches.
        self.generator.prepare_graphs(room_tokens=self.scheduler.limits.max_batch_tokens)
        # The counters describe the evaluation, not the warm-up; the pace too (its batch is a token).
        self.stats = self.scheduler.stats = Stats(device=self.loaded.device)
        self.scheduler.pace = Pace()
        self.gc_clock.stop()
        self.gc_clock = GcClock().start()

    def stats_snapshot(self) -> dict:
        data = self.stats.snapshot()
        data["limits"] = vars(self.scheduler.limits).copy()
        data["pipelined"] = self.scheduler.pipelined
        data["gc"] = self.gc_clock.snapshot()  # the model process's collections since the warm-up
        pace = self.scheduler.pace  # what the pipelined gathers went by (pipeline.Pace)
        data["pace"] = {"on": pace.enabled, "gpu_seconds_per_token": pace.gpu_per_token, "launch_seconds": pace.launch}
        static = self.generator.static
        data["decode"] = {
            "mode": "dynamic"
            if static is None
            else ("static" if not static.use_graphs or static.graph_failed else "cuda-graphs"),
            # The evaluation's captures: not the warm-up's (the standing shape's).
            "graph_captures": static.captures - static.prepared[0] if static is not None else 0,
            "graph_capture_seconds": round(static.capturer.seconds - static.prepared[1], 6)
            if static is not None
            else 0.0,
            "standing": [static.standing.rows, static.standing.columns] if static and static.standing else None,
            "rope_attend": decode_attention.rope_attend_state(static.model) if static is not None else None,
            # The norms folded into the products, steps without norm kernels (folded.py).
            "folded_norms": folded.folded(self.generator.model),
            # The step products' cuBLASLt choices (lt_matmul.tune), by name@rows.
            "lt_products": static.tuned if static is not None else {},
        }
        # Packed batches replayed as CUDA graphs, and the captures batches waited for (not the warm-up's).
        graphs = self.generator.graphs
        data["packed_graph_batches"] = graphs.served if graphs is not None else 0
        data["packed_graph_captures"] = graphs.captures - graphs.prepared if graphs is not None else 0
        return data


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer goes out as two sends, the headers and the body. With Nagle's algorithm the body waits
    # for the client to acknowledge the headers, and on a kept-alive connection (helm_fast's client)
    # the client delays that acknowledgement: ~40 ms a request (44 ms against 0.85 ms without, on
    # the CPU box; a new connection a request, as stock HELM's client, is acknowledged at once).
    disable_nagle_algorithm = True
    server: EngineHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, service.health())
        elif path == "/stats":
            self._send(200, service.stats_snapshot())
        else:
            self._send(404, _error_body("NotFound", "infra", f"no such endpoint: GET {path}"))

    def do_POST(self) -> None:
        cpu_started = time.thread_time()
        try:
            self._post()
        finally:
            self.server.service.stats.add("http_cpu_seconds", time.thread_time() - cpu_started)

    def _post(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        handlers = {"/process": service.process, "/tokenize": service.tokenize, "/decode": service.decode}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise BadRequest("request body too large")
            raw = self.rfile.read(length) if length else b""
            if path not in handlers:
                self._send(404, _error_body("NotFound", "infra", f"no such endpoint: POST {path}"))
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise BadRequest("the body is not valid JSON")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            self._send(200, handlers[path](body))
        except BadRequest as e:
            self._send(400, _error_body("BadRequest", "infra", str(e)))
        except RequestFailed as e:
            self._send(e.status, _error_body(e.error_type, e.kind, e.message))
        except Exception as e:
            log.exception("%s failed", path)
            self._send(500, _error_body("InternalError", "infra", f"{type(e).__name__}: {e}"))


class EngineHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # HELM runs with dozens of threads; do not refuse connections while the model is busy.
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone before its answer (the runner's /health polls time out while the model loads,
        # and are answered from the backlog once it is ready) is no error of the server's: socketserver
        # would print a traceback for each into the server's log.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("%s hung up before its answer", client_address)
            return
        super().handle_error(request, client_address)

    def __init__(
        self,
        address: tuple[str, int],
        service: Frontend,
        listen_fd: int | None = None,
        listen_socket: socket.socket | None = None,
    ):
        self.service = service
        if listen_fd is None and listen_socket is None:
            super().__init__(address, Handler)
            return
        # A socket already listening (bound by the runner before it started us, or by the model process
        # before it forked the front): clients that connect while the model loads wait in its backlog
        # instead of being refused.
        super().__init__(address, Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listen_socket if listen_socket is not None else socket.socket(fileno=listen_fd)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[:2]
