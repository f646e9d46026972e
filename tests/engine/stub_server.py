"""A stand-in model server for runner tests that are about HELM and the runner, not the model: it
answers HELM's HTTP client instantly with a fixed completion. Never shipped; the end-to-end tests use
the real server. Usage: python stub_server.py PORT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMPLETION = " she is a nurse"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._send({"status": "ok", "parameters": 7, "device": "cpu", "max_positions": 2048})
        else:
            self._send({"requests": 3, "output_tokens": 12, "latency_seconds": {"mean": 0.5, "p95": 0.9}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/process":
            words = COMPLETION.split(" ")[1:]
            tokens = [{"text": " " + w, "logprob": -0.5} for w in words]
            self._send({"text": COMPLETION, "logprob": -0.5 * len(words), "tokens": tokens, "request_time": 0.001})
        elif self.path == "/tokenize":
            # One id per character: decode can then give back the exact text.
            self._send({"tokens": [ord(c) for c in body["text"]], "request_time": 0.0})
        else:
            self._send({"text": "".join(chr(t) for t in body["tokens"]), "request_time": 0.0})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
