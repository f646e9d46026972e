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
- Every JSON file is written with `json.dumps(..., indent=2)`, which Python's C encoder does not do:
  its pure-Python encoder runs a generator per container. `dumps_indent_2` writes the same
  characters with plain recursion, in about two thirds of the time (`benchmarks/helm_python.py`), and
  hands anything but JSON's own types back to `json.dumps`.
- HELM's HTTP model client posts each request with `requests.post`, which builds a new session and a
  new connection for every request (and the server a new thread for it). Here each of HELM's threads
  keeps one session, so its requests go over one kept-alive connection: the same requests and answers.
- The garbage collector's full collections walk the imports too (`evaluation.engine.heap`): they are
  frozen before the run starts.

Only the engine's own helm-run processes use this (the runner's command, and its standbys); stock
HELM, which the benchmarks compare with, does not. `tests/engine/test_helm_fast.py` checks both against
HELM's own functions, on statistics with and without perturbations and on a real run's files.
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


# Tokens remembered per process, at most: ~130 MB of token objects. Past it the memo starts afresh
# (a run's prompts are adapted, then scored, in the same order: most are still found).
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


class KeepAlive:
    """What HELM's HTTP model client calls `requests`: `post` goes through one session per thread, whose
    connection stays open between requests; every other name is the `requests` module's own."""

    def __init__(self) -> None:
        import requests

        self._requests = requests
        self._local = threading.local()

    def post(self, url: str, **kwargs: Any) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        return session.post(url, **kwargs)

    def __getattr__(self, name: str) -> Any:  # requests.exceptions and the rest
        return getattr(self._requests, name)


def install() -> None:
    """Put the faster functions where HELM's modules look them up."""
    from helm.benchmark import runner
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
    if not isinstance(http_model_client.requests, KeepAlive):
        http_model_client.requests = KeepAlive()


def main() -> None:
    install()
    heap.freeze()
    runpy.run_module("helm.benchmark.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # `python -m` runs this file as a second module, `__main__`; install the importable one's functions,
    # those a standby installed already, so that a process holds one copy (and one set of caches).
    from evaluation.engine import helm_fast

    helm_fast.main()
