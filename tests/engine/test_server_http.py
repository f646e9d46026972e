"""Every endpoint over real HTTP, including through HELM's own HTTPModelClient and HTTPModelTokenizer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_close, greedy_reference, logprob_reference

GREEDY = {"temperature": 1e-7, "num_return_sequences": 1, "top_p": 1, "echo_prompt": False, "top_k_per_token": 1}


def _process(url: str, **fields) -> requests.Response:
    return requests.post(f"{url}/process", json={**GREEDY, "stop_sequences": [], **fields}, timeout=60)


def test_health_reports_the_model(llama_server):
    body = requests.get(f"{llama_server.url}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert body["parameters"] == sum(p.numel() for p in llama_server.service.loaded.model.parameters())
    assert (body["device"], body["dtype"]) == ("cpu", "float32")


def test_concurrent_requests_equal_sequential_generate(any_server):
    service = any_server.service
    model, tokenizer = service.loaded.model, service.tokenizer
    prompts = PROMPTS + FEW_SHOT_PROMPTS
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: _process(any_server.url, prompt=p, max_new_tokens=8), prompts))
    for prompt, answer in zip(prompts, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids = tokenizer(prompt)["input_ids"]
        expected = greedy_reference(model, tokenizer, ids, 8)
        assert body["text"] == tokenizer.decode(expected)
        assert [t["text"] for t in body["tokens"]] == [tokenizer.decode([t]) for t in expected]
        logprobs = [t["logprob"] for t in body["tokens"]]
        assert_close(logprobs, logprob_reference(model, ids, expected)[1])
        assert abs(body["logprob"] - sum(logprobs)) < 1e-6
        assert body["request_time"] > 0
    stats = requests.get(f"{any_server.url}/stats", timeout=10).json()
    assert stats["requests"] >= len(prompts)
    assert stats["output_tokens"] > 0 and stats["prompt_tokens"] > 0
    assert stats["latency_seconds"]["p95"] >= stats["latency_seconds"]["p50"] > 0
    assert stats["busy_seconds"] > 0
    # Both sides' CPU time is counted (they share the interpreter lock: docs/benchmarks.md).
    assert stats["model_cpu_seconds"] > 0 and stats["http_cpu_seconds"] > 0


def test_stop_sequences_cut_text_and_tokens(llama_server):
    tokenizer = llama_server.service.tokenizer
    full = _process(llama_server.url, prompt=PROMPTS[0], max_new_tokens=12).json()
    texts = [t["text"] for t in full["tokens"]]
    # A stop sequence that starts exactly at a token boundary, first seen there.
    index = next(
        i
        for i in range(2, len(texts))
        if texts[i].strip() and "\ufffd" not in texts[i] and full["text"].find(texts[i]) == len("".join(texts[:i]))
    )
    stop = texts[index]
    cut = _process(llama_server.url, prompt=PROMPTS[0], max_new_tokens=12, stop_sequences=["zzz-never", stop]).json()
    assert cut["text"] == full["text"][: full["text"].find(stop)]
    assert [t["text"] for t in cut["tokens"]] == texts[:index]
    assert abs(cut["logprob"] - sum(t["logprob"] for t in full["tokens"][:index])) < 1e-5
    assert cut["completions"][0]["finish_reason"] == "stop"
    assert tokenizer.decode([]) == ""


def test_echo_prompt_with_no_new_tokens(any_server):
    service = any_server.service
    prompt = PROMPTS[3]
    body = _process(any_server.url, prompt=prompt, max_new_tokens=0, echo_prompt=True).json()
    ids = service.tokenizer(prompt)["input_ids"]
    assert body["text"] == prompt
    assert [t["text"] for t in body["tokens"]] == [service.tokenizer.decode([i]) for i in ids]
    assert body["tokens"][0]["logprob"] == 0.0
    expected, _ = logprob_reference(service.loaded.model, ids, [])
    assert_close([t["logprob"] for t in body["tokens"]], expected)


def test_sampling_is_reproducible_with_a_seed(llama_server):
    fields = {"prompt": PROMPTS[1], "max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9, "num_return_sequences": 3}
    first = _process(llama_server.url, seed=1, **fields).json()
    again = _process(llama_server.url, seed=1, **fields).json()
    other = _process(llama_server.url, seed=2, **fields).json()
    assert len(first["completions"]) == 3
    assert first["completions"] == again["completions"]
    assert first["text"] == first["completions"][0]["text"]
    texts = {c["text"] for c in first["completions"] + other["completions"]}
    assert len(texts) > 1


def test_greedy_with_several_sequences_repeats_the_one_answer(llama_server):
    body = _process(llama_server.url, prompt=PROMPTS[0], max_new_tokens=4, num_return_sequences=2).json()
    assert len(body["completions"]) == 2
    assert body["completions"][0] == body["completions"][1]


def test_tokenize_and_decode(llama_server):
    tokenizer = llama_server.service.tokenizer
    text = "Question: What is 2 plus 3? Answer: 5"
    body = requests.post(
        f"{llama_server.url}/tokenize", json={"text": text, "truncation": False, "max_length": 2048}
    ).json()
    assert body["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert body["request_time"] >= 0
    short = requests.post(
        f"{llama_server.url}/tokenize", json={"text": text, "truncation": True, "max_length": 3}
    ).json()
    assert short["tokens"] == body["tokens"][:3]
    decoded = requests.post(f"{llama_server.url}/decode", json={"tokens": body["tokens"]}).json()
    assert decoded["text"] == text


def test_bad_requests_are_answered_400_or_404(llama_server):
    url = llama_server.url
    assert requests.post(f"{url}/process", json={"prompt": 3}).status_code == 400
    assert requests.post(f"{url}/process", data=b"{not json").status_code == 400
    bad = requests.post(f"{url}/process", json={"prompt": "x", "max_new_tokens": -1})
    assert bad.status_code == 400 and "max_new_tokens" in bad.json()["error"]["message"]
    assert requests.post(f"{url}/decode", json={"tokens": [10**9]}).status_code == 400
    assert requests.post(f"{url}/nope", json={}).status_code == 404
    assert requests.get(f"{url}/nope").status_code == 404


def test_helm_http_client_and_tokenizer_talk_to_the_server(llama_server, monkeypatch):
    from helm.clients.http_model_client import HTTPModelClient
    from helm.common.cache import BlackHoleCacheConfig
    from helm.common.request import Request
    from helm.common.tokenization_request import DecodeRequest, TokenizationRequest
    from helm.tokenizers.http_model_tokenizer import HTTPModelTokenizer

    monkeypatch.delenv("HELM_HTTP_MODEL_BASE_URL", raising=False)
    service = llama_server.service
    client = HTTPModelClient(cache_config=BlackHoleCacheConfig(), base_url=llama_server.url)
    request = Request(
        model="neurips/local", model_deployment="neurips/local", prompt=PROMPTS[1], temperature=0.0, max_tokens=5
    )
    result = client.make_request(request)
    assert result.success, result.error
    ids = service.tokenizer(PROMPTS[1])["input_ids"]
    expected = greedy_reference(service.loaded.model, service.tokenizer, ids, 5)
    assert result.completions[0].text == service.tokenizer.decode(expected)
    assert len(result.completions[0].tokens) == len(expected)

    tokenizer = HTTPModelTokenizer(cache_config=BlackHoleCacheConfig(), base_url=llama_server.url)
    tokens = tokenizer.tokenize(
        TokenizationRequest(PROMPTS[0], tokenizer="neurips/local", encode=True, truncation=True, max_length=2)
    )
    assert tokens.success and len(tokens.tokens) == 2
    decoded = tokenizer.decode(DecodeRequest([t.value for t in tokens.tokens], tokenizer="neurips/local"))
    assert decoded.success and PROMPTS[0].startswith(decoded.text)


def test_answers_go_out_without_waiting_for_the_clients_acknowledgement(llama_server, monkeypatch):
    """Every connection the server answers on has Nagle's algorithm off: with it on, a kept-alive
    client's answers waited ~40 ms each for its delayed acknowledgement of the headers."""
    import socket

    from evaluation.engine.server.app import Handler

    seen, send = [], Handler._send

    def recording(self, status, payload):
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return send(self, status, payload)

    monkeypatch.setattr(Handler, "_send", recording)
    with requests.Session() as session:  # one kept-alive connection, as helm_fast's client
        for _ in range(2):
            assert session.get(f"{llama_server.url}/health", timeout=10).status_code == 200
    assert len(seen) == 2 and all(seen)


def test_a_client_that_hung_up_before_its_answer_costs_no_traceback(capsys, caplog):
    """The runner polls /health with a 2 s timeout while the model loads; the fronts answer the polls
    queued in the backlog once it is ready, to clients long gone. Each such answer printed a
    BrokenPipeError traceback into the server's log."""
    import logging
    import socket
    import struct
    import threading
    import time

    from evaluation.engine.server.app import EngineHTTPServer

    class Stub:
        def __init__(self):
            self.asked, self.release = threading.Event(), threading.Event()

        def health(self):
            self.asked.set()
            self.release.wait(10)
            return {"ok": True}

    stub = Stub()
    server = EngineHTTPServer(("127.0.0.1", 0), stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = socket.create_connection(server.server_address[:2])
        client.sendall(b"GET /health HTTP/1.1\r\nHost: engine\r\n\r\n")
        assert stub.asked.wait(10)
        # Gone at once (a reset, not a graceful close): the answer's first send fails.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with caplog.at_level(logging.DEBUG, logger="evaluation.engine.server.app"):
            stub.release.set()
            deadline = time.monotonic() + 10
            while not any("hung up" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert any("hung up" in r.getMessage() for r in caplog.records)
        assert requests.get(f"http://127.0.0.1:{server.server_address[1]}/health", timeout=10).json() == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capsys.readouterr().err
