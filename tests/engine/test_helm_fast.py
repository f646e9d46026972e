"""helm_fast's functions give exactly what HELM's own give; an evaluation through it scores the same."""

from __future__ import annotations

import gc
import json
import random
from collections import namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.engine import heap, helm_fast, runner

helm = pytest.importorskip("helm.benchmark.metrics.metric")

from helm.benchmark.adaptation.request_state import RequestState  # noqa: E402
from helm.benchmark.augmentations.perturbation_description import PerturbationDescription  # noqa: E402
from helm.benchmark.metrics.metric import PerInstanceStats, compute_worst_case_metrics  # noqa: E402
from helm.benchmark.metrics.metric_name import MetricName  # noqa: E402
from helm.benchmark.metrics.statistic import Stat  # noqa: E402
from helm.benchmark.scenarios.scenario import Input, Instance, Output, Reference  # noqa: E402
from helm.common.general import asdict_without_nones  # noqa: E402
from helm.common.request import GeneratedOutput, Request, RequestResult, Token  # noqa: E402

PERTURBATIONS = [
    None,
    PerturbationDescription(name="typos", robustness=True),
    PerturbationDescription(name="dialect", fairness=True),
    PerturbationDescription(name="lowercase", robustness=True, fairness=True),
    PerturbationDescription(name="extra_space", robustness=True, computed_on="perturbed"),
]


def instances_with_stats(seed: int, n: int = 60) -> dict:
    """Instances of several perturbations each (some without their original), with bool, int and
    float statistics of a few metric names and splits, in a shuffled order."""
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        for perturbation in PERTURBATIONS:
            if perturbation is None and i % 7 == 3 or perturbation is not None and rng.random() < 0.3:
                continue
            instance = Instance(
                Input(text=f"q{i}"), references=[], split="test", id=f"id{i}", perturbation=perturbation
            )
            stats = []
            for name in ("exact_match", "quasi_exact_match", "num_prompt_tokens"):
                for split in ("test", "valid"):
                    metric = MetricName(name, split=split, perturbation=perturbation)
                    value = rng.random() < 0.5 if name != "num_prompt_tokens" else rng.choice([12, 13.5, 40])
                    stats.append(Stat(metric).add(value))
            stats.append(Stat(MetricName("never_added", split="test", perturbation=perturbation)))
            out[instance] = stats
    items = list(out.items())
    rng.shuffle(items)
    return dict(items)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worst_case_metrics_are_helms_in_value_and_order(seed):
    stats = instances_with_stats(seed)
    expected = compute_worst_case_metrics(stats)
    got = helm_fast.compute_worst_case_metrics(stats)
    assert [s.name for s in got] == [s.name for s in expected]  # stats.json keeps its order
    assert got == expected  # every count, sum, min, max, mean, variance: the same floats
    kinds = {s.name.perturbation.computed_on for s in got}
    assert {"worst", "original"} <= kinds  # the test covers both kinds of derived statistics


def test_worst_case_metrics_of_unperturbed_instances():
    stats = {k: v for k, v in instances_with_stats(3).items() if k.perturbation is None}
    assert helm_fast.compute_worst_case_metrics(stats) == compute_worst_case_metrics(stats)
    assert helm_fast.compute_worst_case_metrics({}) == compute_worst_case_metrics({}) == []


def a_request_state() -> RequestState:
    reference = Reference(Output(text="B"), tags=["correct"])
    instance = Instance(Input(text="Which? A or B"), references=[reference], split="test", id="id7",
                        perturbation=PERTURBATIONS[3])  # fmt: skip
    tokens = [Token(text=" B", logprob=-0.25), Token(text="!", logprob=float("-inf"))]
    completion = GeneratedOutput(text=" B!", logprob=-1.5, tokens=tokens, finish_reason={"reason": "length"})
    request = Request(model="challenge/submission", model_deployment="challenge/submission", prompt="Q: A or B?\nA:",
                      max_tokens=1, stop_sequences=["\n"])  # fmt: skip
    result = RequestResult(success=True, embedding=[], completions=[completion], cached=False, request_time=0.01)
    return RequestState(instance=instance, reference_index=None, request_mode=None, train_trial_index=0,
                        output_mapping={"A": "x", "B": "y"}, request=request, result=result, num_train_instances=5,
                        prompt_truncated=False)  # fmt: skip


def test_asdict_without_nones_is_helms():
    Pair = namedtuple("Pair", "left right")
    state = a_request_state()
    per_instance = PerInstanceStats("id7", PERTURBATIONS[1], 0, [Stat(MetricName("exact_match", split="test")).add(1)])
    for obj in (state, per_instance, Stat(MetricName("x"))):
        assert helm_fast.asdict_without_nones(obj) == asdict_without_nones(obj)
        assert json.dumps(helm_fast.asdict_without_nones(obj), indent=2) == json.dumps(
            asdict_without_nones(obj), indent=2
        )
    # Containers as dataclasses.asdict converts them (a namedtuple stays one, dict keys converted too).
    from dataclasses import dataclass, field

    @dataclass
    class Holder:
        pair: Pair
        pairs: tuple
        table: dict = field(default_factory=dict)
        gone: None = None

    holder = Holder(Pair(1, [state.instance]), (2.5, "s"), {"k": [None, {"n": None}]})
    assert helm_fast.asdict_without_nones(holder) == asdict_without_nones(holder)
    assert type(helm_fast.asdict_without_nones(holder)["pair"]) is Pair
    # What is copied is not shared with the object.
    assert helm_fast.asdict_without_nones(holder)["table"]["k"] is not holder.table["k"]
    with pytest.raises(ValueError, match="Expected dataclass"):
        helm_fast.asdict_without_nones({"a": 1})


class CountingTokenizer:
    def __init__(self):
        self.calls = 0

    def tokenize(self, request):
        from helm.common.tokenization_request import TokenizationRequestResult, TokenizationToken

        self.calls += 1
        words = request.text.split()
        return TokenizationRequestResult(success=True, cached=False, text=request.text,
                                         tokens=[TokenizationToken(len(w)) for w in words])  # fmt: skip


RAW_TOKENIZE = CountingTokenizer.tokenize


def test_a_tokenization_is_made_once_and_handed_out_as_a_copy(monkeypatch):
    from helm.common.tokenization_request import TokenizationRequest

    monkeypatch.setattr(CountingTokenizer, "tokenize", helm_fast._remembering(RAW_TOKENIZE))
    tok = CountingTokenizer()
    request = TokenizationRequest("the same five words here", tokenizer="t/t", encode=True)
    first = tok.tokenize(request)
    first.tokens.append("mutated by a caller")
    second = tok.tokenize(TokenizationRequest("the same five words here", tokenizer="t/t", encode=True))
    assert tok.calls == 1
    assert [t.value for t in second.tokens] == [3, 4, 4, 5, 4]
    other = tok.tokenize(TokenizationRequest("the same five words here", tokenizer="t/t", encode=True, max_length=3))
    assert tok.calls == 2 and len(other.tokens) == 5  # another request is another entry


def test_the_tokenization_memo_is_bounded(monkeypatch):
    from helm.common.tokenization_request import TokenizationRequest

    monkeypatch.setattr(helm_fast, "MEMO_TOKENS", 12)
    monkeypatch.setattr(CountingTokenizer, "tokenize", helm_fast._remembering(RAW_TOKENIZE))
    tok = CountingTokenizer()
    texts = [f"five words in text {i}" for i in range(4)]
    for text in texts:
        tok.tokenize(TokenizationRequest(text, tokenizer="t/t"))
    assert len(tok._engine_memo) == 2 and tok._engine_memo_tokens == 10  # 4 × 5 tokens never held at once
    tok.tokenize(TokenizationRequest(texts[-1], tokenizer="t/t"))
    assert tok.calls == 4  # the latest are still there


def test_install_puts_the_functions_where_helm_looks_them_up():
    from helm.benchmark import executor
    from helm.benchmark import runner as helm_runner
    from helm.benchmark.adaptation.adapters.generation_adapter import GenerationAdapter
    from helm.benchmark.adaptation.adapters.in_context_learning_adapter import InContextLearningAdapter
    from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import MultipleChoiceJointAdapter
    from helm.benchmark.metrics import metric, reference_metric
    from helm.clients import http_model_client
    from helm.common import general
    from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer

    client = http_model_client.HTTPModelClient
    saved = (metric.compute_worst_case_metrics, reference_metric.compute_worst_case_metrics,
             helm_runner.asdict_without_nones, HuggingFaceTokenizer.__dict__.get("tokenize"), helm_runner.json,
             http_model_client.requests, executor.parallel_map, client.__dict__["make_request"])  # fmt: skip
    adaptation = [(HuggingFaceTokenizer, "_tokenization_raw_response_to_tokens"),
                  (MultipleChoiceJointAdapter, "construct_example_prompt"), (GenerationAdapter, "construct_example_prompt"),
                  (executor.Executor, "execute")]  # fmt: skip
    saved_adaptation = [cls.__dict__.get(name) for cls, name in adaptation]
    try:
        helm_fast.install()
        keep_alive = http_model_client.requests
        helm_fast.install()  # twice: the tokenizer and the client's method wrapped once, `requests` replaced once
        assert isinstance(keep_alive, helm_fast.KeepAlive) and http_model_client.requests is keep_alive
        assert metric.compute_worst_case_metrics is helm_fast.compute_worst_case_metrics
        assert reference_metric.compute_worst_case_metrics is helm_fast.compute_worst_case_metrics
        assert helm_runner.asdict_without_nones is helm_fast.asdict_without_nones
        assert not hasattr(HuggingFaceTokenizer.tokenize.__wrapped__, "__wrapped__")
        assert helm_runner.json.dumps({"a": [1]}, indent=2) == json.dumps({"a": [1]}, indent=2)
        assert isinstance(helm_runner.json, helm_fast._Json)
        assert executor.parallel_map is helm_fast.parallel_map and general.parallel_map is not helm_fast.parallel_map
        assert client.make_request.__wrapped__ is saved[7] and not hasattr(saved[7], "__wrapped__")
        assert HuggingFaceTokenizer._tokenization_raw_response_to_tokens is helm_fast._shared_tokens
        mc_example = MultipleChoiceJointAdapter.construct_example_prompt
        assert mc_example.__wrapped__ is saved_adaptation[1] and not hasattr(saved_adaptation[1], "__wrapped__")
        generation_example = GenerationAdapter.construct_example_prompt
        assert generation_example.__wrapped__ is InContextLearningAdapter.construct_example_prompt
        assert not hasattr(InContextLearningAdapter.construct_example_prompt, "__wrapped__")  # other adapters' own
        assert executor.Executor.execute.__wrapped__ is saved_adaptation[3]
    finally:
        for (cls, name), value in zip(adaptation, saved_adaptation, strict=True):
            if value is None:
                delattr(cls, name)
            else:
                setattr(cls, name, value)
        helm_runner.json, http_model_client.requests = saved[4], saved[5]
        metric.compute_worst_case_metrics, reference_metric.compute_worst_case_metrics = saved[:2]
        helm_runner.asdict_without_nones = saved[2]
        executor.parallel_map, client.make_request = saved[6], saved[7]
        if saved[3] is None:
            del HuggingFaceTokenizer.tokenize
        else:
            HuggingFaceTokenizer.tokenize = saved[3]


def test_keep_alive_posts_each_threads_requests_over_one_connection():
    """HELM's client with `requests.post` opens a connection a request; through KeepAlive each thread
    keeps one, and the answers are the server's."""
    import http.server
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    peers = []

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            peers.append(self.client_address)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/process"
    try:
        keep_alive = helm_fast.KeepAlive()

        def three(client, first):
            return [client.post(url, json={"n": first + i}, timeout=10).json()["n"] for i in range(3)]

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda first: three(keep_alive, first), [0, 10]))
        assert answers == [[0, 1, 2], [10, 11, 12]]
        assert len(peers) == 6 and len(set(peers)) == 2  # one connection a thread
        peers.clear()
        assert three(requests, 20) == [20, 21, 22] and len(set(peers)) == 3  # stock: one a request
        assert keep_alive.exceptions.RequestException is requests.exceptions.RequestException
    finally:
        server.shutdown()
        server.server_close()


def test_freeze_leaves_existing_objects_out_of_collections():
    before = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]
    heap.freeze()
    try:
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


@pytest.mark.helm
@pytest.mark.slow
def test_an_evaluation_through_helm_fast_scores_as_stock_helm_run(tiny_llama_dir, tmp_path, monkeypatch):
    from tests.engine.test_runner_e2e import scores

    fast = runner.evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24,
                           out_dir=tmp_path / "fast", device="cpu", threads=4)  # fmt: skip
    monkeypatch.setattr(runner, "HELM_MODULE", "helm.benchmark.run")
    stock = runner.evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24,
                            out_dir=tmp_path / "stock", device="cpu", threads=4)  # fmt: skip
    assert fast.status == stock.status == "succeeded"
    assert any(r.computed_on == "worst" for r in fast.records)  # robustness and fairness worst cases
    assert scores(fast) == pytest.approx(scores(stock), rel=1e-5, abs=1e-9)
    # Every per-instance statistic too, measured times aside.
    assert per_instance(tmp_path / "fast") == pytest.approx(per_instance(tmp_path / "stock"), rel=1e-5, abs=1e-9)


def per_instance(out) -> dict:
    values = {}
    for path in (out / "helm").rglob("per_instance_stats.json"):
        for entry in json.loads(path.read_text()):
            for stat in entry["stats"]:
                name = stat["name"]
                if "time" in name["name"] or "runtime" in name["name"]:
                    continue
                key = (path.parent.name, entry["instance_id"], json.dumps(entry.get("perturbation")),
                       json.dumps(name, sort_keys=True))  # fmt: skip
                for field in ("count", "sum", "min", "max"):
                    values[(*key, field)] = stat.get(field)
    assert len(values) > 100
    return values


def test_the_runner_runs_helm_fast():
    cmd = runner.helm_command(*["x"] * 4, threads=4, default_instances=3, plugins=[])
    assert cmd[1:3] == ["-m", "evaluation.engine.helm_fast"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text() | st.integers() | st.floats() | st.booleans() | st.none(), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_dumps_indent_2_writes_what_json_dumps_writes(value):
    assert helm_fast.dumps_indent_2(value) == json.dumps(value, indent=2)


def test_dumps_indent_2_hands_other_types_to_json():
    from enum import IntEnum, StrEnum

    class Color(StrEnum):
        RED = "r"

    class Level(IntEnum):
        HIGH = 3

    value = {"color": Color.RED, "level": Level.HIGH, Level.HIGH: [float("-inf"), "é\n"]}
    assert helm_fast.dumps_indent_2(value) == json.dumps(value, indent=2)
    with pytest.raises(TypeError):
        helm_fast.dumps_indent_2({"x": object()})  # json.dumps's own error
    state = helm_fast.asdict_without_nones(a_request_state())
    assert helm_fast.dumps_indent_2(state) == json.dumps(state, indent=2)
    assert helm_fast._Json().dumps(state, indent=2) == json.dumps(state, indent=2)
    assert helm_fast._Json().dumps(state) == json.dumps(state) and helm_fast._Json().loads("[1]") == [1]


@pytest.mark.parametrize("keep_alive", [False, True])
def test_the_client_rate_benchmark_sends_through_helms_client(capsys, keep_alive):
    from helm.clients import http_model_client

    from benchmarks import helm_client_rate

    saved = http_model_client.requests
    try:
        helm_client_rate.main(["--requests", "40", "--threads", "8"] + (["--keep-alive"] if keep_alive else []))
    finally:
        http_model_client.requests = saved
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["succeeded"] == 40 and line["keep_alive"] == keep_alive and line["requests_per_s"] > 0


def test_a_runs_state_is_frozen_out_of_collections_once_its_requests_are_answered():
    """What `Executor.execute` returns (and everything else alive then) is left out of the collections
    while the run's metrics are computed, and still freed by its reference count when dropped."""
    import gc
    import weakref

    class State:
        pass

    state = State()
    execute = helm_fast._freezing_after(lambda self, scenario_state: scenario_state)
    before = gc.get_freeze_count()
    try:
        assert execute(None, state) is state
        assert gc.get_freeze_count() > before
        gone = weakref.ref(state)
        del state
        assert gone() is None
    finally:
        gc.unfreeze()
