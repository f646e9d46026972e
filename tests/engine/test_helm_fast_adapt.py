"""helm_fast's adaptation path gives the request states HELM's own gives: the same prompts, requests,
in-context examples and truncation, for the run specs helm-run builds for the engine's deployment."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from evaluation.engine import heap, helm_fast

pytest.importorskip("helm.benchmark.adaptation.adapters.in_context_learning_adapter")

from helm.benchmark.adaptation.adapters.generation_adapter import GenerationAdapter  # noqa: E402
from helm.benchmark.adaptation.adapters.in_context_learning_adapter import InContextLearningAdapter  # noqa: E402
from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import MultipleChoiceJointAdapter  # noqa: E402
from helm.common.tokenization_request import TokenizationToken  # noqa: E402
from helm.tokenizers.caching_tokenizer import CachingTokenizer  # noqa: E402
from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer  # noqa: E402

from benchmarks import helm_adapt_rate  # noqa: E402


def stock(method):
    return getattr(method, "__wrapped__", method)


STOCK_TOKENIZE = stock(CachingTokenizer.tokenize)
STOCK_MC_EXAMPLE = stock(MultipleChoiceJointAdapter.construct_example_prompt)
STOCK_EXAMPLE = InContextLearningAdapter.construct_example_prompt
HELMS_TOKENS = CachingTokenizer._tokenization_raw_response_to_tokens

MC = "offline:task=unit_conversion,shots=5,perturbations=none"
GENERATION = "offline:task=arithmetic,shots=5,perturbations=none"
PERTURBED_MC = "offline:task=factual_recall,shots=3"  # the default: robustness and fairness perturbations


@pytest.fixture
def helm_fast_adapt(monkeypatch):
    """helm_fast's adaptation path, undone afterwards (install() is for a whole helm-run process)."""

    def patch():
        monkeypatch.setattr(HuggingFaceTokenizer, "tokenize", helm_fast._remembering(STOCK_TOKENIZE))
        monkeypatch.setattr(HuggingFaceTokenizer, "_tokenization_raw_response_to_tokens", helm_fast._shared_tokens,
                            raising=False)  # fmt: skip
        monkeypatch.setattr(MultipleChoiceJointAdapter, "construct_example_prompt",
                            helm_fast._remembering_examples(STOCK_MC_EXAMPLE, MultipleChoiceJointAdapter))  # fmt: skip
        monkeypatch.setattr(GenerationAdapter, "construct_example_prompt",
                            helm_fast._remembering_examples(STOCK_EXAMPLE, GenerationAdapter), raising=False)  # fmt: skip

    return patch


@pytest.fixture
def stock_helm(monkeypatch):
    """HELM's own functions, whatever an earlier install() in this process left; a fresh tokenizer cache (HELM
    keeps one tokenizer per name and process, and each test writes its own)."""
    monkeypatch.setattr(HuggingFaceTokenizer, "tokenize", STOCK_TOKENIZE)
    monkeypatch.setattr(MultipleChoiceJointAdapter, "construct_example_prompt", STOCK_MC_EXAMPLE)
    for cls, name in ((HuggingFaceTokenizer, "_tokenization_raw_response_to_tokens"),
                      (GenerationAdapter, "construct_example_prompt")):  # fmt: skip
        if name in vars(cls):  # an inherited one is HELM's
            monkeypatch.delattr(cls, name)
    monkeypatch.setattr(HuggingFaceTokenizer, "_tokenizers", {})


@pytest.fixture(scope="module")
def tokenizer_facts(tmp_path_factory) -> dict:
    """The speed benchmarks' 1.1B tokenizer (a 2048-token byte-level BPE) and the runner's facts of it."""
    return helm_adapt_rate.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def adapted(tmp_path, facts: dict, description: str, max_length: int, instances: int = 40) -> list:
    """The request states helm-run's adapter makes for `description`, the deployment's context `max_length`."""
    prod_env = tmp_path / f"prod_env_{max_length}"
    spec = helm_adapt_rate.run_spec(prod_env, {**facts, "max_sequence_length": max_length}, description, instances)
    service = helm_adapt_rate.tokenizer_service(prod_env, 4)  # a new tokenizer, as a new helm-run has
    return helm_adapt_rate.adapt(spec, helm_adapt_rate.instances_for(spec, 4), service, parallelism=4)


def fields(states: list) -> list:
    """Every field of every request state (an `Instance` equals only itself)."""
    return [dataclasses.asdict(state) for state in states]


@pytest.mark.parametrize(
    "description, max_lengths",
    [(MC, (4096, 530, 200, 60, 12)), (GENERATION, (4096, 250, 40, 15)), (PERTURBED_MC, (4096, 300, 40))],
)
def test_adaptation_is_helms(description, max_lengths, tmp_path, tokenizer_facts, stock_helm, helm_fast_adapt):
    """Every request state equal, field for field: prompts that fit with all their shots, prompts that drop
    in-context examples to fit, and prompts truncated once none is left."""
    expected = {n: adapted(tmp_path, tokenizer_facts, description, n) for n in max_lengths}
    helm_fast_adapt()
    got = {n: adapted(tmp_path, tokenizer_facts, description, n) for n in max_lengths}
    for n in max_lengths:
        assert [s.request.prompt for s in got[n]] == [s.request.prompt for s in expected[n]]
        assert fields(got[n]) == fields(expected[n])
    shots = {n: Counter(s.num_train_instances for s in expected[n]) for n in max_lengths}
    top = int(description.split("shots=")[1][0])
    assert set(shots[max_lengths[0]]) == {top}  # all fit
    assert any(set(shots[n]) - {0, top} for n in max_lengths)  # fewer in-context examples
    assert any(s.prompt_truncated for s in expected[max_lengths[-1]])  # none left, and cut
    if description == PERTURBED_MC:
        assert any(s.instance.perturbation is not None for s in expected[4096])


def test_shared_tokens_are_helms():
    """The same tokens in the same order, of the same types; equal values share one (frozen) object."""
    cases = [[5, 9, 5, 1, 2047], ["Hello", " world", "Hello"], [], [True, 1], [1, "1"], [3], [3.0]]
    for values in cases:
        response = {"tokens": values}
        got = helm_fast._shared_tokens(None, response, None)
        expected = HELMS_TOKENS(None, response, None)
        assert got == expected
        assert [type(t.value) for t in got] == [type(v) for v in values]  # True is not the token 1, nor 3.0 3
    first = helm_fast._shared_tokens(None, {"tokens": [7, 8]}, None)
    again = helm_fast._shared_tokens(None, {"tokens": [8, 7, 7]}, None)
    assert again[0] is first[1] and again[1] is again[2] is first[0]
    assert first == [TokenizationToken(7), TokenizationToken(8)] and first is not again


class Counted:
    def __init__(self, method):
        self.method, self.calls = method, []

    def __call__(self, adapter, instance, include_output, reference_index):
        self.calls.append((instance.id, include_output, reference_index))
        return self.method(adapter, instance, include_output, reference_index)


def test_example_blocks_are_made_once_per_training_instance(tmp_path, tokenizer_facts, stock_helm, monkeypatch):
    counted = Counted(STOCK_MC_EXAMPLE)
    monkeypatch.setattr(MultipleChoiceJointAdapter, "construct_example_prompt",
                        helm_fast._remembering_examples(counted, MultipleChoiceJointAdapter))  # fmt: skip
    states = adapted(tmp_path, tokenizer_facts, MC, 4096, instances=30)
    train = {c for c in counted.calls if c[1]}
    assert len(train) == 5 and len(counted.calls) == 5 + 30  # each shot once, each eval instance once
    assert set(counted.calls) - train == {(s.instance.id, False, None) for s in states}
    assert len(states) == 30 and {s.num_train_instances for s in states} == {5}


def test_subclasses_and_other_blocks_go_helms_way(tmp_path, tokenizer_facts, stock_helm):
    from helm.benchmark.adaptation.adapters.multiple_choice_joint_chain_of_thought_adapter import (
        MultipleChoiceJointChainOfThoughtAdapter,
    )

    counted = Counted(STOCK_MC_EXAMPLE)
    remembering = helm_fast._remembering_examples(counted, MultipleChoiceJointAdapter)
    spec = helm_adapt_rate.run_spec(tmp_path / "prod_env", tokenizer_facts, MC, 3)
    service = helm_adapt_rate.tokenizer_service(tmp_path / "prod_env", 1)
    instances = helm_adapt_rate.instances_for(spec, 1)
    subclass = MultipleChoiceJointChainOfThoughtAdapter(spec.adapter_spec, service)
    adapter = MultipleChoiceJointAdapter(spec.adapter_spec, service)
    for _ in range(2):
        for instance in instances[:2]:
            assert remembering(subclass, instance, True, None) == STOCK_MC_EXAMPLE(subclass, instance, True, None)
            assert remembering(adapter, instance, False, None) == STOCK_MC_EXAMPLE(adapter, instance, False, None)
            assert remembering(adapter, instance, True, None) == STOCK_MC_EXAMPLE(adapter, instance, True, None)
    assert "_engine_examples" not in vars(subclass)  # a subclass's calls are not remembered
    assert len(counted.calls) == 2 * 2 + 2 * 2 + 2  # nor the eval blocks; each example block once


def test_the_adapt_rate_benchmark_adapts_through_helms_adapter(capsys, monkeypatch, stock_helm, helm_fast_adapt):
    installed = []
    monkeypatch.setattr(helm_fast, "install", lambda: installed.append(helm_fast_adapt()))
    monkeypatch.setattr(heap, "freeze", lambda collect=True: None)  # not this test process's
    helm_adapt_rate.main(["--instances", "25", "--threads", "4", "--stock"])
    assert installed == []
    monkeypatch.setattr(HuggingFaceTokenizer, "_tokenizers", {})
    helm_adapt_rate.main(["--instances", "25", "--threads", "4"])
    assert len(installed) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line["helm_fast"], line["request_states"], line["shots"]) for line in lines] == [
        (False, 25, {"5": 25}),
        (True, 25, {"5": 25}),
    ]
    assert lines[0]["digest"] == lines[1]["digest"]
    assert lines[0]["run"] == f"{MC},max_eval_instances=25,model=challenge_submission"
    assert all(line["seconds"] > 0 and line["ms_per_instance"] > 0 for line in lines)
