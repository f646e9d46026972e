"""How fast HELM's own HTTP model client can send, with no model behind it.

    python -m benchmarks.helm_client_rate --requests 3000 --threads 128 [--keep-alive]

A stub server in another process answers every POST at once with a one-token completion; one process
(as one helm-run) sends `--requests` multiple-choice requests through HELM's `HTTPModelClient` from
`--threads` threads (HELM's executor's pool), each with `requests.post` (a session and a connection a
request, as stock HELM) or, with `--keep-alive`, through helm_fast's `KeepAlive` (a kept-alive
connection a thread). Prints one JSON line: requests per second and the sender's CPU per request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import multiprocessing
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

ANSWER = json.dumps({"text": " A", "tokens": [{"text": " A", "logprob": -0.5, "top_logprobs": {}}],
                     "logprob": -0.5, "request_time": 0.001}).encode()  # fmt: skip


class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args) -> None:
        pass


def serve(listen: socket.socket, handler: type = Stub) -> None:
    server = http.server.ThreadingHTTPServer(listen.getsockname(), handler, bind_and_activate=False)
    server.socket = listen
    server.daemon_threads = True
    server.serve_forever()


@contextlib.contextmanager
def stub_server(handler: type = Stub) -> Iterator[str]:
    """A stub answering with `handler` in a forked process on a free port; its base URL."""
    listen = socket.create_server(("127.0.0.1", 0), backlog=1024)
    stub = multiprocessing.get_context("fork").Process(target=serve, args=(listen, handler), daemon=True)
    stub.start()
    try:
        yield f"http://127.0.0.1:{listen.getsockname()[1]}"
    finally:
        stub.terminate()


def rates(requests: int, wall: float, cpu: float) -> dict:
    """Requests per second and the sending process's CPU milliseconds a request."""
    return {"requests_per_s": round(requests / wall, 1), "sender_cpu_ms_per_request": round(1000 * cpu / requests, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--keep-alive", action="store_true", help="helm_fast's client (a connection a thread)")
    args = parser.parse_args(argv)

    from helm.clients import http_model_client
    from helm.common.cache import BlackHoleCacheConfig
    from helm.common.request import Request

    from evaluation.engine.helm_fast import KeepAlive

    with stub_server() as base_url:
        if args.keep_alive:
            http_model_client.requests = KeepAlive()
        client = http_model_client.HTTPModelClient(BlackHoleCacheConfig(), base_url=base_url)
        question = "Question: how many metres are in a kilometre?\nA. 10\nB. 100\nC. 1000\nAnswer: C\n\n" * 6
        requests = [Request(model="stub/stub", model_deployment="stub/stub", prompt=question + f"Question {i}?",
                            max_tokens=1, temperature=0) for i in range(args.requests)]  # fmt: skip
        assert client.make_request(requests[0]).success
        started, cpu_started = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(args.threads) as pool:
            ok = sum(result.success for result in pool.map(client.make_request, requests))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({
        "requests": args.requests,
        "threads": args.threads,
        "keep_alive": args.keep_alive,
        "succeeded": ok,
        **rates(args.requests, wall, cpu),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
