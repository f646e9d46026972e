"""helm_fast's execute path (KeepAlive's posts, HTTPModelClient.make_request without its unused cache key,
the executor's parallel_map) gives what stock HELM gives: the same bytes sent, the same answers, the same
errors."""

from __future__ import annotations

import http.server
import json
import random
import re
import threading
import time
from dataclasses import replace

import pytest
import requests

from evaluation.engine import helm_fast

pytest.importorskip("helm.clients.http_model_client")

from helm.clients import http_model_client  # noqa: E402
from helm.clients.http_model_client import HTTPModelClient  # noqa: E402
from helm.common.cache import BlackHoleCacheConfig  # noqa: E402
from helm.common.request import Request  # noqa: E402

STOCK_MAKE_REQUEST = getattr(HTTPModelClient.make_request, "__wrapped__", HTTPModelClient.make_request)


class Server(http.server.BaseHTTPRequestHandler):
    """Answers by path: /ok a completion made from the prompt, /bad a 500, /notjson text, /broken a completion
    without tokens, /redirect a 307 to /ok, /cookie a completion with a cookie, /slow after a second.
    Records each request as received: request line, headers in order, body."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.requestline, list(self.headers.items()), body))
        kind = self.path.split("/")[1]
        status, extra, payload = 200, [], None
        if kind in ("ok", "cookie", "slow", "broken"):
            prompt = json.loads(body).get("prompt", "??")
            payload = {"text": prompt[-2:], "logprob": -0.25 * len(prompt), "request_time": 0.5,
                       "tokens": [{"text": c, "logprob": -0.125, "top_logprobs": {}} for c in prompt[-2:]]}  # fmt: skip
            if kind == "broken":
                del payload["tokens"]
            if kind == "cookie":
                extra = [("Set-Cookie", "session=abc; Path=/")]
            if kind == "slow":
                time.sleep(1.0)
        elif kind == "bad":
            status, payload = 500, {"error": "InternalError"}
        elif kind == "redirect":
            status, extra, payload = 307, [("Location", "/ok/process")], {}
        data = b"not json" if kind == "notjson" else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # a client that timed out and left
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def sent(post, url, **kwargs):
    """What `post` sent and what it gave back (or raised)."""
    Server.seen.clear()
    try:
        outcome = post(url, **kwargs)
    except requests.exceptions.RequestException as e:
        outcome = e
    return list(Server.seen), outcome


def response_fields(r) -> tuple:
    headers = {k: v for k, v in r.headers.items() if k != "Date"}  # the second it was answered in
    return (r.status_code, r.reason, r.url, headers, r.content, r.encoding, [h.url for h in r.history],
            r.cookies.get_dict(), r.request.url, dict(r.request.headers), r.request.body)  # fmt: skip


def same_text(error) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x…", f"{type(error).__name__}: {error}")


BODIES = [
    {"prompt": "Question: 2+2?\nAnswer:", "temperature": 1e-7, "num_return_sequences": 1, "max_new_tokens": 1,
     "top_p": 1, "echo_prompt": False, "top_k_per_token": 5, "stop_sequences": []},
    {"prompt": "é ü 漢字 \u2028 \"quoted\" \\ back", "stop_sequences": ["\n", "###"], "temperature": 0.7},
    {},
    {"prompt": "x" * 5000, "nested": {"a": [1, 2.5, None, True]}},
]  # fmt: skip


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("path", ["/ok/process", "/redirect/process", "/bad/process"])
def test_keep_alive_sends_and_answers_as_requests_does(base, path, body):
    keep_alive = helm_fast.KeepAlive()
    for _ in range(2):  # the second through the URL's plan, on the kept connection
        stock_seen, stock = sent(requests.post, base + path, json=body, timeout=30)
        fast_seen, fast = sent(keep_alive.post, base + path, json=body, timeout=30)
        assert fast_seen == stock_seen  # request line, every header in order, the body: byte for byte
        assert response_fields(fast) == response_fields(stock)
        if stock.status_code >= 400:
            with pytest.raises(requests.HTTPError) as stock_error:
                stock.raise_for_status()
            with pytest.raises(requests.HTTPError) as fast_error:
                fast.raise_for_status()
            assert str(fast_error.value) == str(stock_error.value)
        else:
            assert fast.json() == stock.json()


def test_a_session_with_a_cookie_posts_as_a_session_does(base):
    keep_alive, session = helm_fast.KeepAlive(), requests.Session()
    for path in ("/cookie/process", "/ok/process", "/ok/process"):
        stock_seen, stock = sent(session.post, base + path, json=BODIES[0], timeout=30)
        fast_seen, fast = sent(keep_alive.post, base + path, json=BODIES[0], timeout=30)
        assert fast_seen == stock_seen
        assert response_fields(fast) == response_fields(stock)
    assert ("Cookie", "session=abc") in fast_seen[0][1]  # the server's cookie, sent back as a session does


def test_keep_alive_errors_are_requests_errors(base):
    keep_alive = helm_fast.KeepAlive()
    closed = requests.get(base + "/").url.rsplit(":", 1)[0] + ":9"  # nothing listens on port 9
    cases = [
        (base + "/ok/process", {"json": {"x": float("nan")}, "timeout": 30}),  # requests refuses NaN
        (closed + "/process", {"json": BODIES[0], "timeout": 30}),  # connection refused
        (base + "/slow/process", {"json": BODIES[0], "timeout": 0.2}),  # read timeout
        ("http://user:secret@" + base.split("//")[1] + "/ok/process", {"json": BODIES[0], "timeout": 30}),  # auth
        (base + "/ok/process", {"json": BODIES[0], "timeout": 30, "headers": {"X-More": "1"}}),  # other arguments
    ]
    for url, kwargs in cases:
        for _ in range(2):
            stock_seen, stock = sent(requests.post, url, **kwargs)
            fast_seen, fast = sent(keep_alive.post, url, **kwargs)
            assert fast_seen == stock_seen
            if isinstance(stock, Exception):
                assert same_text(fast) == same_text(stock)
            else:
                assert response_fields(fast) == response_fields(stock)
    stock, fast = requests.post(base + "/notjson/process", json={}), keep_alive.post(base + "/notjson/process", json={})
    with pytest.raises(requests.exceptions.JSONDecodeError) as stock_error:
        stock.json()
    with pytest.raises(requests.exceptions.JSONDecodeError) as fast_error:
        fast.json()
    assert str(fast_error.value) == str(stock_error.value)


def result_or_error(client, request):
    try:
        return client.make_request(request)
    except Exception as e:
        return same_text(e)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_make_request_without_its_cache_key_is_helms(base, monkeypatch, keep_alive):
    if keep_alive:
        monkeypatch.setattr(http_model_client, "requests", helm_fast.KeepAlive())
    fast_make_request = helm_fast._without_cache_key(STOCK_MAKE_REQUEST)
    closed = requests.get(base + "/").url.rsplit(":", 1)[0] + ":9"
    requests_ = [
        Request(model="c/s", model_deployment="c/s", prompt="Q: A or B?\nA:", max_tokens=1, temperature=0,
                top_k_per_token=5, stop_sequences=["\n"]),
        Request(model="c/s", model_deployment="c/s", prompt="Ünïcode", temperature=0.5, num_completions=2),
        Request(model="c/s", model_deployment="c/s", prompt="embed me", embedding=True),
    ]  # fmt: skip
    compared = 0
    for url in (base + "/ok", base + "/bad", base + "/notjson", base + "/broken", closed):
        for do_cache in (False, True):
            client = HTTPModelClient(BlackHoleCacheConfig(), base_url=url, timeout=30, do_cache=do_cache)
            monkeypatch.delenv("HELM_HTTP_MODEL_BASE_URL", raising=False)
            for request in requests_:
                monkeypatch.setattr(HTTPModelClient, "make_request", STOCK_MAKE_REQUEST)
                stock = result_or_error(client, request)
                monkeypatch.setattr(HTTPModelClient, "make_request", fast_make_request)
                fast = result_or_error(client, request)
                if isinstance(stock, str):
                    assert fast == stock  # the same exception (KeyError: 'tokens' for /broken)
                else:
                    if do_cache:  # HELM's cache path (in both) stamps its own request time
                        fast, stock = (replace(r, request_time=None, request_datetime=None) for r in (fast, stock))
                    assert fast == stock  # every field of the RequestResult
                    assert fast.success == (url == base + "/ok" and not request.embedding)
                compared += 1
    assert compared == 30


def test_make_request_makes_no_cache_key_when_it_does_not_cache(base, monkeypatch):
    calls = []
    monkeypatch.setattr(http_model_client, "asdict", lambda request: calls.append(request) or {})
    client = HTTPModelClient(BlackHoleCacheConfig(), base_url=base + "/ok", timeout=30)
    monkeypatch.delenv("HELM_HTTP_MODEL_BASE_URL", raising=False)
    assert helm_fast._without_cache_key(STOCK_MAKE_REQUEST)(client, Request(prompt="abc")).success
    assert calls == []
    client.do_cache = True
    assert helm_fast._without_cache_key(STOCK_MAKE_REQUEST)(client, Request(prompt="abc")).success
    assert len(calls) == 1  # HELM's own method, its cache key made


def stock_parallel_map(process, items, parallelism):
    from helm.common.general import parallel_map

    return parallel_map(process, items, parallelism)


def outcome(parallel_map, process, items, parallelism):
    try:
        return parallel_map(process, items, parallelism)
    except BaseException as e:
        return (type(e), e.args)


@pytest.mark.parametrize("parallelism", [1, 3, 16])
@pytest.mark.parametrize("failing", [(), (37,), (5, 6, 80), (0,), (99,)])
def test_parallel_map_gives_helms_results_and_error(parallelism, failing):
    rng = random.Random(len(failing) * 100 + parallelism)
    delays = [rng.random() * 0.002 for _ in range(100)]

    def process(i):
        time.sleep(delays[i])
        if i in failing:
            raise ValueError(f"item {i}")
        return (i, i * i)

    items = list(range(100))
    expected = outcome(stock_parallel_map, process, items, parallelism)
    got = outcome(helm_fast.parallel_map, process, items, parallelism)
    assert got == expected
    assert got == ((ValueError, (f"item {min(failing)}",)) if failing else [(i, i * i) for i in items])


def test_parallel_map_stops_after_a_failure_and_passes_interrupts_on():
    started = []

    def process(i):
        started.append(i)
        if i == 10:
            raise KeyboardInterrupt
        time.sleep(0.001)
        return i

    assert outcome(helm_fast.parallel_map, process, list(range(1000)), 4) == (KeyboardInterrupt, ())
    assert set(range(11)) <= set(started) and len(started) < 100  # those before it ran, few after
    assert helm_fast.parallel_map(lambda i: i, [], 8) == [] and helm_fast.parallel_map(str, [7], 8) == ["7"]
    assert helm_fast.parallel_map(str, [1, 2, 3], 8) == ["1", "2", "3"]


@pytest.fixture
def helm_fast_execute(monkeypatch):
    """helm_fast's execute path, undone afterwards (install() is for a whole helm-run process)."""
    from helm.benchmark import executor

    def patch():
        monkeypatch.setattr(http_model_client, "requests", helm_fast.KeepAlive())
        monkeypatch.setattr(HTTPModelClient, "make_request", helm_fast._without_cache_key(STOCK_MAKE_REQUEST))
        monkeypatch.setattr(executor, "parallel_map", helm_fast.parallel_map)

    return patch


def test_the_executor_executes_as_stock_helm_does(base, tmp_path, monkeypatch, helm_fast_execute):
    """HELM's Executor built as helm-run builds it for the engine's deployment, over our stub server: the
    request states it gives back are equal, field for field, and so is its error when requests fail."""
    from helm.benchmark.adaptation.adapter_spec import AdapterSpec
    from helm.benchmark.adaptation.scenario_state import ScenarioState
    from helm.clients import auto_client
    from helm.proxy.retry import get_retry_decorator, retry_if_request_failed

    from benchmarks import helm_execute_rate

    # HELM's retries, without its waits of 5, 10, 20 and 40 seconds.
    monkeypatch.setattr(auto_client, "retry_request", get_retry_decorator(
        "Request", max_attempts=3, wait_exponential_multiplier_seconds=0, retry_on_result=retry_if_request_failed))  # fmt: skip

    def execute(url, states):
        monkeypatch.setenv("HELM_HTTP_MODEL_BASE_URL", url)
        executor = helm_execute_rate.executor(tmp_path / "prod_env", url, threads=8)
        scenario = ScenarioState(adapter_spec=AdapterSpec(method="multiple_choice_joint"), request_states=states)
        try:
            return executor.execute(scenario).request_states
        except Exception as e:
            return same_text(e)

    states = helm_execute_rate.request_states(60)
    stock = [execute(base + "/ok", states), execute(base + "/bad", states[:5])]
    helm_fast_execute()
    fast = [execute(base + "/ok", states), execute(base + "/bad", states[:5])]
    assert fast == stock
    assert all(s.result.success and s.result.completions[0].text == "r:" for s in fast[0])
    assert "after retrying 3 times. Error: Request error: 500 Server Error" in fast[1]


def test_the_execute_rate_benchmark_runs_helms_executor(capsys, monkeypatch, helm_fast_execute):
    from benchmarks import helm_execute_rate

    installed = []
    monkeypatch.setattr(helm_fast, "install", lambda: installed.append(helm_fast_execute()))
    helm_execute_rate.main(["--requests", "30", "--threads", "4", "--stock"])
    assert installed == []
    helm_execute_rate.main(["--requests", "30", "--threads", "4"])
    assert len(installed) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["helm_fast"], line["succeeded"]) for line in lines] == [(False, 30), (True, 30)]
    assert all(line["requests_per_s"] > 0 and line["sender_cpu_ms_per_request"] > 0 for line in lines)
