"""Run spec functions registered with HELM by the engine's plugin.

- `offline:task=<task>[,shots=N][,perturbations=canonical|robustness|fairness|none][,max_tokens=N][,stop=newline|none]`
  on the offline data. `canonical` applies HELM's download-free perturbations: `mild_mix` (typos,
  lowercase, contractions, extra spaces; robustness) and gender pronoun swaps (fairness), so HELM
  writes worst-case `robustness` and `fairness` stats. Generative tasks also get HELM's bias metrics.
- `challenge_samsum`, `challenge_corr2cause`, `challenge_ethics:subset=<s>`: the 2023 hidden-set
  scenarios missing upstream, reading the organizers' local data.
"""

from __future__ import annotations

from dataclasses import replace

from helm.benchmark.adaptation.adapter_spec import ADAPT_MULTIPLE_CHOICE_JOINT
from helm.benchmark.adaptation.common_adapter_specs import (
    get_generation_adapter_spec,
    get_multiple_choice_adapter_spec,
)
from helm.benchmark.augmentations.data_augmenter import DataAugmenterSpec
from helm.benchmark.metrics.common_metric_specs import (
    get_basic_metric_specs,
    get_bias_metric_specs,
    get_exact_match_metric_specs,
    get_f1_metric_specs,
)
from helm.benchmark.run_expander import gender, mild_mix
from helm.benchmark.run_spec import RunSpec, run_spec_function
from helm.benchmark.scenarios.scenario import TEST_SPLIT, ScenarioSpec

OFFLINE_SCENARIO = "evaluation.engine.helm_plugin.scenarios.OfflineTaskScenario"
LOCAL_SCENARIO = "evaluation.engine.helm_plugin.scenarios.LocalJsonlScenario"

# Kind of each offline task, and how its prompt reads.
OFFLINE_TASKS = {
    "arithmetic": ("short_answer", "Answer with a number only."),
    "unit_conversion": ("multiple_choice", "The following are multiple choice questions about units (with answers)."),
    "ordering": ("short_answer", "Answer with the ordered list or the single word asked for."),
    "date_reasoning": ("multiple_choice", "The following are multiple choice questions about dates (with answers)."),
    "factual_recall": ("multiple_choice", "The following are multiple choice questions about facts (with answers)."),
    "people_sentences": ("short_answer", "Write one sentence about the person."),
}
SHORT_ANSWER_MAX_TOKENS = {"arithmetic": 8, "ordering": 24, "people_sentences": 32}


def data_augmenter_spec(perturbations: str) -> DataAugmenterSpec:
    """Download-free perturbations, applied to eval instances next to the originals."""
    robustness = [mild_mix()]
    fairness = [gender(mode="pronouns", prob=1.0, source_class="male", target_class="female")]
    specs = {"canonical": robustness + fairness, "robustness": robustness, "fairness": fairness, "none": []}
    if perturbations not in specs:
        raise ValueError(f"unknown perturbations {perturbations!r}; use one of {sorted(specs)}")
    if not specs[perturbations]:
        return DataAugmenterSpec()
    return DataAugmenterSpec(
        perturbation_specs=specs[perturbations],
        should_augment_train_instances=False,
        should_include_original_train=True,
        should_skip_unchanged_train=True,
        should_augment_eval_instances=True,
        should_include_original_eval=True,
        should_skip_unchanged_eval=True,
        seeds_per_instance=1,
    )


@run_spec_function("offline")
def get_offline_spec(
    task: str, shots: str = "3", perturbations: str = "canonical", max_tokens: str = "", stop: str = "newline"
) -> RunSpec:
    if task not in OFFLINE_TASKS:
        raise ValueError(f"unknown offline task {task!r}; known: {sorted(OFFLINE_TASKS)}")
    kind, instructions = OFFLINE_TASKS[task]
    scenario_spec = ScenarioSpec(class_name=OFFLINE_SCENARIO, args={"task": task})
    if kind == "multiple_choice":
        adapter_spec = get_multiple_choice_adapter_spec(
            method=ADAPT_MULTIPLE_CHOICE_JOINT,
            instructions=instructions,
            input_noun="Question",
            output_noun="Answer",
            max_train_instances=int(shots),
        )
        metric_specs = get_exact_match_metric_specs()
    else:
        adapter_spec = get_generation_adapter_spec(
            instructions=instructions,
            input_noun="Question",
            output_noun="Answer",
            max_train_instances=int(shots),
            max_tokens=int(max_tokens) if max_tokens else SHORT_ANSWER_MAX_TOKENS[task],
            stop_sequences=["\n"] if stop == "newline" else [],
        )
        metric_specs = (get_f1_metric_specs() if task == "people_sentences" else get_exact_match_metric_specs()) + (
            get_bias_metric_specs()
        )
    # The valid split stays for participants' own checks: only test instances are evaluated.
    adapter_spec = replace(adapter_spec, eval_splits=[TEST_SPLIT])
    name = f"offline:task={task}"
    for key, value, default in (
        ("shots", shots, "3"),
        ("perturbations", perturbations, "canonical"),
        ("max_tokens", max_tokens, ""),
        ("stop", stop, "newline"),
    ):
        if value != default:
            name += f",{key}={value}"
    return RunSpec(
        name=name,
        scenario_spec=scenario_spec,
        adapter_spec=adapter_spec,
        metric_specs=metric_specs,
        data_augmenter_spec=data_augmenter_spec(perturbations),
        groups=[f"offline_{task}"],
    )


@run_spec_function("challenge_samsum")
def get_samsum_spec() -> RunSpec:
    """SAMSum dialogue summarization, scored with ROUGE-2 as the 2023 hidden set was."""
    adapter_spec = get_generation_adapter_spec(
        instructions="Summarize the dialogue.",
        input_noun="Dialogue",
        newline_after_input_noun=True,
        output_noun="Summary",
        max_train_instances=1,
        max_tokens=128,
        stop_sequences=["###"],
    )
    return RunSpec(
        name="challenge_samsum",
        scenario_spec=ScenarioSpec(class_name=LOCAL_SCENARIO, args={"dataset": "samsum"}),
        adapter_spec=adapter_spec,
        metric_specs=get_basic_metric_specs(["rouge_1", "rouge_2", "rouge_l"]) + get_bias_metric_specs(),
        groups=["samsum"],
    )


@run_spec_function("challenge_corr2cause")
def get_corr2cause_spec() -> RunSpec:
    adapter_spec = get_generation_adapter_spec(
        instructions="Decide whether the hypothesis follows from the premise. Answer Yes or No.",
        input_noun="Question",
        output_noun="Answer",
        max_train_instances=5,
        max_tokens=3,
    )
    return RunSpec(
        name="challenge_corr2cause",
        scenario_spec=ScenarioSpec(class_name=LOCAL_SCENARIO, args={"dataset": "corr2cause"}),
        adapter_spec=adapter_spec,
        metric_specs=get_exact_match_metric_specs(),
        groups=["corr2cause"],
    )


ETHICS_SUBSETS = ("justice", "commonsense", "virtue", "deontology", "utilitarianism")


@run_spec_function("challenge_ethics")
def get_ethics_spec(subset: str) -> RunSpec:
    if subset not in ETHICS_SUBSETS:
        raise ValueError(f"unknown ETHICS subset {subset!r}; known: {ETHICS_SUBSETS}")
    adapter_spec = get_multiple_choice_adapter_spec(
        method=ADAPT_MULTIPLE_CHOICE_JOINT,
        instructions=f"The following are multiple choice questions about ethics ({subset}).",
        input_noun="Question",
        output_noun="Answer",
        max_train_instances=5,
    )
    return RunSpec(
        name=f"challenge_ethics:subset={subset}",
        scenario_spec=ScenarioSpec(class_name=LOCAL_SCENARIO, args={"dataset": "ethics", "subset": subset}),
        adapter_spec=adapter_spec,
        metric_specs=get_exact_match_metric_specs(),
        groups=[f"ethics_{subset}"],
    )
