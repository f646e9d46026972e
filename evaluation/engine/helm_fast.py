"""helm-run with HELM's slowest pure-Python steps done faster, their results unchanged.

    python -m evaluation.engine.helm_fast ARGS   # the same as: python -m helm.benchmark.run ARGS

Once the server answered a multiple-choice request in about a millisecond, most of an evaluation was
HELM's own Python in its helm-run processes (docs/benchmarks.md). Parts of it redo the same work
for every statistic or every prompt:

- `compute_worst_case_metrics` (the robustness and fairness worst cases) builds its metric names with
  `dataclasses.replace` several times per statistic, although a run has only a few dozen distinct
  names. Here each distinct name is derived once; the statistics are merged in the same order with
  the same arithmetic, so every figure and the order of `stats.json` stay the same.
- `asdict_without_nones`, behind every JSON file HELM writes, goes through `dataclasses.asdict`, which
  looks up a class's fields and deep-copies every value one by one. Here the fields are looked up once
  per class and values of plain types are used as they are; the dictionaries are equal, so the files
  are byte for byte the same.
- Every prompt is tokenized when it is adapted (does it fit the context window?) and again by the
  efficiency metrics (how many prompt tokens?); with the cache off (`--disable-cache`, so that no
  evaluation reuses another's answers) both run the tokenizer and build a token object per token.
  Here a process remembers the result of each tokenization request it made (the same tokenizer on
  the same text gives the same tokens; up to `MEMO_TOKENS` tokens) and hands out a copy of it.
- Each tokenization built a new token object for every token of the text: several hundred per
  prompt, most of a tokenization's Python. Those the memo kept made the garbage collector walk them
  again and again while prompts were adapted, which took twice as long as without the memo
  (`benchmarks/helm_adapt_rate.py`). Tokens are frozen: here there is one object per distinct token,
  and a tokenization's list holds the same tokens in the same order.
- Adapting builds the blocks of the same few in-context examples again for every prompt; here the
  multiple-choice joint and generation adapters make each example's block once.
- Every JSON file is written with `json.dumps(..., indent=2)`, which Python's C encoder does not do:
  its pure-Python encoder runs a generator per container. `dumps_indent_2` writes the same
  characters with plain recursion, in about two thirds of the time (`benchmarks/helm_python.py`), and
  hands anything but JSON's own types back to `json.dumps`.
- HELM's HTTP model client posts each request with `requests.post`, which builds a new session and a
  new connection for every request (and the server a new thread for it). Here each of HELM's threads
  keeps one session, so its requests go over one kept-alive connection: the same requests and answers.
- Each of those posts went through `Session.post`, which works out again for every request what is the
  same for every request to one URL (cookies, ~/.netrc, merged headers, proxy variables): here once a
  URL; requests still builds each body and `Session.send` sends it (`_PostPlan`).
- `HTTPModelClient.make_request` deep-copies each request (`dataclasses.asdict`) for a cache key that
  it uses only when it caches, which the engine's deployment does not: here the key is made only then.
- The executor sends its requests through `parallel_map`, a `ThreadPoolExecutor` with a future, a work
  item and a lock a request; here its threads take the items in turn, the results and the error are
  the same. Together about 40% less of helm-run's CPU a request (`benchmarks/helm_execute_rate.py`).
- The garbage collector's full collections walk the imports too (`evaluation.engine.heap`): they are
  frozen before the run starts. Once a run's requests are answered, its state (every prompt, request
  and answer) is frozen too, so that the collections while its metrics are computed and written do
  not walk it again and again (`_freezing_after`); it is still freed when the run ends.

Only the engine's own helm-run processes use this (the runner's command, and its standbys); stock
HELM, which the benchmarks compare with, does not. `tests/engine/test_helm_fast.py` checks both against
HELM's own functions, on statistics with and without perturbations and on a real run's files;
`tests/engine/test_helm_fast_execute.py` the execute path's, down to the bytes sent and the errors.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import runpy
import threading
from collections import defaultdict
from json.encoder import encode_basestring_ascii
from typing import Any

from evaluation.engine import heap

_ATOMIC = frozenset({type(None), bool, int, float, str, bytes, complex, type(...), type(NotImplemented)})
_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(obj: Any) -> Any:
    """What `dataclasses.asdict` with the none-dropping factory makes of `obj`."""
    kind = type(obj)
    if kind in _ATOMIC:
        return obj  # deepcopy returns these unchanged
    names = _FIELDS.get(kind)
    if names is None and hasattr(kind, "__dataclass_fields__"):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    if names is not None:
        out = {}
        for name in names:
            value = _plain(getattr(obj, name))
            if value is not None:
                out[name] = value
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return kind(*[_plain(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return kind(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return kind((_plain(k), _plain(v)) for k, v in obj.items())
    return copy.deepcopy(obj)


def asdict_without_nones(obj: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ValueError(f"Expected dataclass, got '{obj}'")
    return _plain(obj)


def compute_worst_case_metrics(per_instance_stats: dict) -> list:
    """HELM's `compute_worst_case_metrics`, step for step, with each derived metric name made once."""
    from helm.benchmark.augmentations.perturbation_description import (
        PERTURBATION_ORIGINAL,
        PERTURBATION_WORST,
        PerturbationDescription,
    )
    from helm.benchmark.metrics.statistic import Stat, merge_stat

    replace = dataclasses.replace
    robustness = PerturbationDescription(name="robustness", robustness=True)
    fairness = PerturbationDescription(name="fairness", fairness=True)
    unperturbed: dict = {}
    derived_names: dict = {}

    def derived(name, which):
        key = (name, which)
        found = derived_names.get(key)
        if found is None:
            if which == "robustness":
                found = replace(name, perturbation=robustness)
            elif which == "fairness":
                found = replace(name, perturbation=fairness)
            else:
                found = replace(name, perturbation=replace(name.perturbation, computed_on=which))
            derived_names[key] = found
        return found

    groups: dict = defaultdict(list)
    for instance, stats in per_instance_stats.items():
        for stat in stats:
            assert instance.id is not None
            base = unperturbed.get(stat.name)
            if base is None:
                base = unperturbed[stat.name] = replace(stat.name, perturbation=None)
            groups[(base, instance.id)].append(stat)

    derived_stats: dict = {}
    for (metric_name, _instance_id), stats in groups.items():
        original = None
        robustness_stat = Stat(derived(metric_name, "robustness"))
        fairness_stat = Stat(derived(metric_name, "fairness"))
        individual: dict = {}
        for stat in stats:
            perturbation = stat.name.perturbation
            if perturbation is None:
                assert original is None, f"For {metric_name} got both {original} and {stat}"
                original = stat
            else:
                if perturbation.robustness:
                    robustness_stat.merge(stat)
                if perturbation.fairness:
                    fairness_stat.merge(stat)
                assert perturbation not in individual, perturbation
                individual[perturbation] = Stat(stat.name).merge(stat)
        for stat in [robustness_stat, fairness_stat, *individual.values()]:
            perturbation = stat.name.perturbation
            if original is not None:
                stat.merge(original)
                if perturbation.name not in ("robustness", "fairness"):
                    before = Stat(derived(stat.name, PERTURBATION_ORIGINAL)).merge(original)
                    merge_stat(derived_stats, before)
            if stat.count > 0:
                merge_stat(derived_stats, Stat(derived(stat.name, PERTURBATION_WORST)).add(stat.min))
    return list(derived_stats.values())


# Tokens remembered per process, at most: ~16 MB of lists of the (shared) token objects. Past it the memo
# starts afresh (a run's prompts are adapted, then scored, in the same order: most are still found).
MEMO_TOKENS = 2_000_000

_INF = float("inf")


class _NotPlainJson(Exception):
    pass


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INF:
        return "Infinity"
    if value == -_INF:
        return "-Infinity"
    return float.__repr__(value)


def _key_text(key: Any) -> str:
    # json.dumps's order of checks for keys that are not strings
    if isinstance(key, str):
        return encode_basestring_ascii(key)
    if isinstance(key, float):
        return encode_basestring_ascii(_float_text(key))
    if key is True or key is False or key is None:
        return {True: '"true"', False: '"false"', None: '"null"'}[key]
    if isinstance(key, int):
        return encode_basestring_ascii(int.__repr__(key))
    raise _NotPlainJson


def dumps_indent_2(obj: Any) -> str:
    """`json.dumps(obj, indent=2)`, character for character."""
    out: list[str] = []
    put = out.append

    def encode(o: Any, newline: str) -> None:
        if isinstance(o, str):
            put(encode_basestring_ascii(o))
        elif o is None:
            put("null")
        elif o is True:
            put("true")
        elif o is False:
            put("false")
        elif isinstance(o, int):
            put(int.__repr__(o))
        elif isinstance(o, float):
            put(_float_text(o))
        elif isinstance(o, (list, tuple, dict)):
            if not o:
                put("{}" if isinstance(o, dict) else "[]")
                return
            inner = newline + "  "
            pairs = isinstance(o, dict)
            put(("{" if pairs else "[") + inner)
            for i, item in enumerate(o.items() if pairs else o):
                if i:
                    put("," + inner)
                if pairs:
                    put(_key_text(item[0]) + ": ")
                    item = item[1]
                encode(item, inner)
            put(newline + ("}" if pairs else "]"))
        else:
            raise _NotPlainJson

    try:
        encode(obj, "\n")
    except (_NotPlainJson, RecursionError):
        return json.dumps(obj, indent=2)
    return "".join(out)


class _Json:
    """The `json` module as helm's runner sees it, its indented `dumps` the faster one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return dumps_indent_2(obj) if kwargs == {"indent": 2} else json.dumps(obj, **kwargs)


def _remembering(tokenize):
    def remembered_tokenize(self, request):
        memo = self.__dict__.setdefault("_engine_memo", {})
        result = memo.get(request)
        if result is None:
            result = tokenize(self, request)
            held = self.__dict__.get("_engine_memo_tokens", 0) + len(result.tokens)
            if held > MEMO_TOKENS:
                memo.clear()
                held = len(result.tokens)
            self.__dict__["_engine_memo_tokens"] = held
            memo[request] = result
        return dataclasses.replace(result, tokens=list(result.tokens))

    remembered_tokenize.__wrapped__ = tokenize
    return remembered_tokenize


# One token object per distinct value (and type) a process has tokenized: `TokenizationToken` is frozen.
_TOKENS: dict[type, dict[Any, Any]] = {int: {}, str: {}}


def _shared_tokens(self, response, request):
    """HELM's `CachingTokenizer._tokenization_raw_response_to_tokens` (`[TokenizationToken(token) for
    token in response["tokens"]]`), with each distinct token one object: equal tokens, in the same
    list, made once per process instead of once per token of every prompt and completion. A prompt's
    several hundred token objects were most of a tokenization's Python, and those the memo kept most
    of the garbage collector's work while adapting (`benchmarks/helm_adapt_rate.py`)."""
    from helm.common.tokenization_request import TokenizationToken

    values = response["tokens"]
    kinds = set(map(type, values))
    if len(kinds) != 1 or not kinds <= _TOKENS.keys():  # only ints and strs: True is not the token 1
        return [TokenizationToken(value) for value in values]
    known = _TOKENS[kinds.pop()]
    for value in set(values).difference(known):
        known[value] = TokenizationToken(value)
    return list(map(known.__getitem__, values))


def _remembering_examples(construct_example_prompt, adapter_class):
    """HELM's `construct_example_prompt` of `adapter_class` (the multiple-choice joint adapter's, or the
    generation adapter's, InContextLearningAdapter's), remembering the in-context examples' blocks.

    `construct_prompt` builds the blocks of the same few training instances again for every eval
    instance. For these two classes a block is made from the adapter's spec and the instance alone (both
    frozen), so each adapter keeps the one it made per training instance. Other calls (the eval
    instance's own block) and subclasses, which may override what the method calls, go HELM's way."""

    def construct_example_prompt_remembering(self, instance, include_output, reference_index):
        if not include_output or reference_index is not None or type(self) is not adapter_class:
            return construct_example_prompt(self, instance, include_output, reference_index)
        blocks = self.__dict__.setdefault("_engine_examples", {})
        found = blocks.get(id(instance))
        if found is None or found[0] is not instance or found[1] is not self.adapter_spec:
            block = construct_example_prompt(self, instance, include_output, reference_index)
            found = blocks[id(instance)] = (instance, self.adapter_spec, block)  # the instance kept: its id stays
        return found[2]

    construct_example_prompt_remembering.__wrapped__ = construct_example_prompt
    return construct_example_prompt_remembering


class KeepAlive:
    """What HELM's HTTP model client calls `requests`: `post` goes through one session per thread, whose
    connection stays open between requests; every other name is the `requests` module's own.

    `Session.post` prepares every request from scratch: it merges the session's (empty) cookie jars,
    looks for the URL in ~/.netrc, merges the session's headers, params and hooks, and reads the proxy
    and CA-bundle variables of the environment, all the same for every request to one URL. Here that
    is done once per URL (`_PostPlan`); each post then has requests build its body (`prepare_body`,
    the same bytes and headers in the same order) and is sent by `Session.send` as before (redirects,
    hooks, cookies, errors all requests' own). A session holding cookies posts the ordinary way."""

    def __init__(self) -> None:
        import requests

        self._requests = requests
        self._local = threading.local()
        self._plans: dict[str, Any] = {}

    def post(self, url: str, **kwargs: Any) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        if kwargs.keys() == {"json", "timeout"} and type(url) is str and not len(session.cookies):
            plan = self._plans.get(url)
            if plan is None:
                plan = self._plans[url] = _PostPlan.of(session, url)
            if plan:
                return plan.post(session, kwargs["json"], kwargs["timeout"])
        return session.post(url, **kwargs)

    def __getattr__(self, name: str) -> Any:  # requests.exceptions and the rest
        return getattr(self._requests, name)


class _PostPlan:
    """What `Session.post(url, json=..., timeout=...)` works out the same for every request to `url`: the
    prepared URL, the headers before the body's, and the settings from the environment."""

    def __init__(self, url: str, headers: Any, settings: dict[str, Any]) -> None:
        from requests.cookies import RequestsCookieJar
        from requests.models import PreparedRequest

        self.url, self.headers, self.settings = url, headers, settings
        self.jar, self.prepared = RequestsCookieJar, PreparedRequest

    @classmethod
    def of(cls, session: Any, url: str) -> _PostPlan | bool:
        """As `Session.request` prepares a post (False where it would add a cookie or credentials:
        those go the ordinary way)."""
        import requests

        prepared = session.prepare_request(requests.Request(method="POST", url=url, data={}, json={}, params={}))
        headers = prepared.headers
        if "Authorization" in headers or "Cookie" in headers or session.auth or session.params:
            return False
        headers = headers.copy()
        del headers["Content-Length"], headers["Content-Type"]  # the body's, which come last
        settings = session.merge_environment_settings(prepared.url, {}, None, None, None)
        return cls(prepared.url, headers, settings)

    def post(self, session: Any, json_body: Any, timeout: Any) -> Any:
        prepared = self.prepared()
        prepared.method = "POST"
        prepared.url = self.url
        prepared.headers = self.headers.copy()
        prepared._cookies = self.jar()  # as the session's (empty) jar merged into a new one
        prepared.prepare_body({}, [], json_body)  # requests' own: the body, Content-Length, Content-Type
        settings = self.settings
        return session.send(prepared, timeout=timeout, allow_redirects=True, proxies=settings["proxies"].copy(),
                            stream=settings["stream"], verify=settings["verify"], cert=settings["cert"])  # fmt: skip


def parallel_map(process, items, parallelism):
    """HELM's `parallel_map` as its executor sends requests with it: the same results in the same order,
    the same exception (the failed item's with the lowest index) after the same threads have finished.

    HELM's hands each item to a `ThreadPoolExecutor` (a future, a work item, a queue and a lock per
    request, all made before the first request goes out); here each of the threads takes the next item
    itself. Once an item has failed no thread starts one after it (HELM's cancels those not started
    when its loop reaches the failed one): the run has failed either way."""
    from helm.common import general

    if parallelism == 1 or len(items) < 2:
        return general.parallel_map(process, items, parallelism)
    from tqdm import tqdm

    n = len(items)
    results: list = [None] * n
    indices = iter(range(n))  # each index to one thread, in order (a range iterator's next is atomic)
    errors: dict[int, BaseException] = {}
    first_error = [n]  # the lowest index that failed: items before it still run, those after it do not
    lock = threading.Lock()
    done = [0] * min(parallelism, n)  # items each thread has finished, for the progress bar

    def work(me: int) -> None:
        for i in indices:
            if i > first_error[0]:
                return
            try:
                results[i] = process(items[i])
            except BaseException as e:  # as a future keeps it
                with lock:
                    errors[i] = e
                    first_error[0] = min(first_error[0], i)
            done[me] += 1

    with general.htrack_block(f"Parallelizing computation on {n} items over {parallelism} threads"):
        threads = [threading.Thread(target=work, args=(k,), name=f"parallel_map_{k}") for k in range(len(done))]
        try:
            for thread in threads:
                thread.start()
            with tqdm(total=n, disable=None) as bar:
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.5)
                        bar.update(sum(done) - bar.n)
        except BaseException:  # an interrupt: as HELM's, no item starts and those running finish
            first_error[0] = -1
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            raise
        if errors:
            raise errors[first_error[0]]
    return results


def _without_cache_key(make_request):
    """HELM's `HTTPModelClient.make_request`, which starts with `asdict(request)` (a deep copy of the
    request, prompt included) for its cache key even when it does not cache (`do_cache` is off for
    the engine's deployment): here the key is made only where it is used, by HELM's own method."""
    from helm.clients import http_model_client as client
    from helm.common.request import EMBEDDING_UNAVAILABLE_REQUEST_RESULT, GeneratedOutput, RequestResult, Token

    def make_request_without_cache_key(self, request):
        if self.do_cache:
            return make_request(self, request)
        if request.embedding:
            return EMBEDDING_UNAVAILABLE_REQUEST_RESULT
        raw_request = {
            "prompt": request.prompt,
            "temperature": 1e-7 if request.temperature == 0 else request.temperature,
            "num_return_sequences": request.num_completions,
            "max_new_tokens": request.max_tokens,
            "top_p": request.top_p,
            "echo_prompt": request.echo_prompt,
            "top_k_per_token": request.top_k_per_token,
            "stop_sequences": request.stop_sequences,
        }
        requests = client.requests  # the module's, as HELM's method looks it up: KeepAlive once installed
        try:
            answer = requests.post(f"{self.base_url}/process", json=raw_request, timeout=self.timeout)
            answer.raise_for_status()
            response = answer.json()
            tokens = [Token(text=token["text"], logprob=token["logprob"]) for token in response["tokens"]]
            completions = [GeneratedOutput(text=response["text"], logprob=response["logprob"], tokens=tokens)]
            return RequestResult(success=True, cached=False, error=None, completions=completions, embedding=[],
                                 request_time=response["request_time"])  # fmt: skip
        except requests.exceptions.RequestException as e:
            client.hexception(e)
            error: str = f"Request error: {e}"
            return RequestResult(success=False, cached=False, error=error, completions=[], embedding=[])

    make_request_without_cache_key.__wrapped__ = make_request
    return make_request_without_cache_key


def _freezing_after(execute):
    """HELM's `Executor.execute`, the objects alive once it returns frozen out of later collections: the
    metrics phase allocates enough to start hundreds of collections, each walking the run's state
    (~0.39 s of a 1,000-instance multiple-choice run's ~1.3 s of metrics on the CPU box, 0.14-0.25 s
    with the state frozen). Frozen objects are still freed by their reference counts; only cycles among
    them would outlive the run."""

    def execute_then_freeze(self, scenario_state):
        done = execute(self, scenario_state)
        heap.freeze(collect=False)
        return done

    execute_then_freeze.__wrapped__ = execute
    return execute_then_freeze


def install() -> None:
    """Put the faster functions where HELM's modules look them up."""
    from helm.benchmark import executor, runner
    from helm.benchmark.adaptation.adapters.generation_adapter import GenerationAdapter
    from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import MultipleChoiceJointAdapter
    from helm.benchmark.metrics import metric, reference_metric
    from helm.clients import http_model_client
    from helm.common import general
    from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer

    # Modules that imported a name hold their own reference to it: replace it there too.
    for module in (metric, reference_metric):
        module.compute_worst_case_metrics = compute_worst_case_metrics
    for module in (general, runner):
        module.asdict_without_nones = asdict_without_nones
    runner.json = _Json()
    if not hasattr(HuggingFaceTokenizer.tokenize, "__wrapped__"):
        HuggingFaceTokenizer.tokenize = _remembering(HuggingFaceTokenizer.tokenize)
    if "_tokenization_raw_response_to_tokens" not in vars(HuggingFaceTokenizer):  # CachingTokenizer's
        HuggingFaceTokenizer._tokenization_raw_response_to_tokens = _shared_tokens
    if not isinstance(http_model_client.requests, KeepAlive):
        http_model_client.requests = KeepAlive()
    executor.parallel_map = parallel_map
    if not hasattr(executor.Executor.execute, "__wrapped__"):
        executor.Executor.execute = _freezing_after(executor.Executor.execute)
    for adapter in (MultipleChoiceJointAdapter, GenerationAdapter):
        if not hasattr(adapter.construct_example_prompt, "__wrapped__"):
            adapter.construct_example_prompt = _remembering_examples(adapter.construct_example_prompt, adapter)
    client = http_model_client.HTTPModelClient
    if not hasattr(client.make_request, "__wrapped__"):
        client.make_request = _without_cache_key(client.make_request)


def main() -> None:
    install()
    heap.freeze()
    runpy.run_module("helm.benchmark.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # `python -m` runs this file as a second module, `__main__`; install the importable one's functions,
    # those a standby installed already, so that a process holds one copy (and one set of caches).
    from evaluation.engine import helm_fast

    helm_fast.main()
