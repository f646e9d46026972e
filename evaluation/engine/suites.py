"""Named evaluation suites: HELM run entries with instance counts, a main metric per scenario, and a
time limit. The portal stores a suite by name; a participant runs the same name at home.

Offline suites run anywhere on data shipped in the repo (via the engine's HELM plugin). The
`challenge-2023-*` suites reproduce the 2023 confs and need HELM's data cache (see
docs/evaluate-locally.md) and, for the hidden set, the organizers' local data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLUGIN = "evaluation.engine.helm_plugin"


@dataclass(frozen=True)
class SuiteEntry:
    """One HELM run entry (without `model=`; the runner adds the deployment)."""

    description: str
    scenario: str  # the scenario group its metrics are averaged under
    instances: int | None = None  # None: the suite's default (`helm-run -m`)
    ranked: bool = True  # False: run and stored, left out of the ranking (2023's CNN/DailyMail)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    entries: tuple[SuiteEntry, ...]
    main_metrics: dict[str, str]  # scenario -> metric name HELM writes
    time_limit_s: int
    default_instances: int = 100
    hidden: bool = False  # scenario names, prompts and logs are not shown to participants
    offline: bool = True  # runs without HELM's data cache
    plugins: tuple[str, ...] = (PLUGIN,)
    perturbed_metric: dict[str, str] = field(default_factory=dict)  # scenario -> metric for robustness/fairness

    @property
    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(e.scenario for e in self.entries))

    def main_metric(self, scenario: str) -> str:
        return self.main_metrics.get(scenario, "exact_match")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "hidden": self.hidden,
            "offline": self.offline,
            "time_limit_s": self.time_limit_s,
            "default_instances": self.default_instances,
            "scenarios": [
                {
                    "name": s,
                    "main_metric": self.main_metric(s),
                    "ranked": any(e.ranked for e in self.entries if e.scenario == s),
                }
                for s in self.scenarios
            ],
            "entries": [
                {"description": e.description, "scenario": e.scenario, "instances": e.instances, "ranked": e.ranked}
                for e in self.entries
            ],
        }


def _offline(task: str, instances: int, **args: str) -> SuiteEntry:
    extra = "".join(f",{k}={v}" for k, v in args.items())
    return SuiteEntry(f"offline:task={task}{extra}", scenario=f"offline_{task}", instances=instances)


OFFLINE_MAIN_METRICS = {
    "offline_arithmetic": "exact_match",
    "offline_unit_conversion": "exact_match",
    "offline_ordering": "exact_match",
    "offline_date_reasoning": "exact_match",
    "offline_factual_recall": "exact_match",
    "offline_people_sentences": "f1_score",
}

# ---------------------------------------------------------------------------------------- offline
OFFLINE_SMOKE = Suite(
    name="offline-smoke",
    description="Two tiny runs (a generative one with bias metrics, a multiple-choice one) for tests.",
    entries=(
        _offline("people_sentences", 6, shots="1", max_tokens="12"),
        _offline("unit_conversion", 6, shots="1"),
    ),
    main_metrics=OFFLINE_MAIN_METRICS,
    time_limit_s=600,
    default_instances=6,
)

OFFLINE_OPEN = Suite(
    name="offline-open",
    description="Open offline suite: arithmetic, unit conversion, factual recall, sentences about people.",
    entries=(
        _offline("arithmetic", 30),
        _offline("unit_conversion", 30),
        _offline("factual_recall", 30),
        _offline("people_sentences", 30, max_tokens="20"),
    ),
    main_metrics=OFFLINE_MAIN_METRICS,
    time_limit_s=3600,
    default_instances=30,
)

OFFLINE_HIDDEN = Suite(
    name="offline-hidden",
    description="Hidden offline suite: date reasoning, ordering, zero-shot arithmetic and sentences.",
    entries=(
        _offline("date_reasoning", 30),
        _offline("ordering", 30),
        _offline("arithmetic", 30, shots="0"),
        _offline("people_sentences", 30, shots="0", max_tokens="20"),
    ),
    main_metrics=OFFLINE_MAIN_METRICS,
    time_limit_s=3600,
    default_instances=30,
    hidden=True,
)

# Speed benchmarks (issue 8): no perturbations, so every request is a plain one of the kind measured.
PREFILL_MC = Suite(
    name="prefill-mc",
    description="Multiple-choice heavy: five-shot prompts, one output token each.",
    entries=(
        _offline("unit_conversion", 500, shots="5", perturbations="none"),
        _offline("date_reasoning", 500, shots="5", perturbations="none"),
        _offline("factual_recall", 500, shots="5", perturbations="none"),
    ),
    main_metrics=OFFLINE_MAIN_METRICS,
    time_limit_s=7200,
    default_instances=500,
)

GENERATION = Suite(
    name="generation",
    description="Generation heavy: 128 new tokens an answer, no stop sequence.",
    entries=(
        _offline("people_sentences", 50, shots="1", perturbations="none", max_tokens="128", stop="none"),
        _offline("arithmetic", 50, shots="1", perturbations="none", max_tokens="128", stop="none"),
    ),
    main_metrics=OFFLINE_MAIN_METRICS,
    time_limit_s=7200,
    default_instances=50,
)

# ------------------------------------------------------------------------------------- 2023 sets
BIG_BENCH_TASKS = [
    ("auto_debugging", ""),
    ("code_line_description", ""),
    *[
        ("conceptual_combinations", s)
        for s in (
            "contradictions",
            "emergent_properties",
            "fanciful_fictional_combinations",
            "homonyms",
            "invented_words",
        )
    ],
    ("emoji_movie", ""),
    ("formal_fallacies_syllogisms_negation", ""),
    ("known_unknowns", ""),
    ("linguistics_puzzles", ""),
    ("logic_grid_puzzle", ""),
    *[("logical_deduction", s) for s in ("three_objects", "five_objects", "seven_objects")],
    ("novel_concepts", ""),
    ("operators", ""),
    ("play_dialog_same_or_different", ""),
    ("repeat_copy_logic", ""),
    *[("strange_stories", s) for s in ("boolean", "multiple_choice")],
    ("strategyqa", ""),
    *[("symbol_interpretation", s) for s in ("adversarial", "emoji_agnostic", "name_agnostic", "plain", "tricky")],
    ("vitaminc_fact_verification", ""),
    ("winowhy", ""),
]
MMLU_SUBJECTS = """anatomy college_medicine college_biology high_school_biology college_computer_science
high_school_computer_science computer_security electrical_engineering machine_learning high_school_mathematics
college_mathematics abstract_algebra high_school_statistics college_chemistry high_school_chemistry
high_school_physics college_physics astronomy formal_logic logical_fallacies philosophy moral_disputes
moral_scenarios professional_law international_law jurisprudence high_school_european_history
high_school_us_history high_school_world_history prehistory world_religions business_ethics global_facts
management marketing miscellaneous professional_accounting nutrition human_aging clinical_knowledge
medical_genetics professional_medicine virology high_school_government_and_politics high_school_geography
us_foreign_policy public_relations security_studies high_school_psychology human_sexuality
professional_psychology sociology high_school_microeconomics econometrics high_school_macroeconomics""".split()
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _split_budget(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _challenge_2023_open(budget: int = 2000) -> tuple[SuiteEntry, ...]:
    """The 2023 open conf; like the organizers' script, the instance budget is split evenly over
    scenario groups, then over each group's entries."""
    groups: dict[str, list[str]] = {}
    for task, subtask in BIG_BENCH_TASKS:
        groups.setdefault(f"big_bench_{task}", []).append(
            f"big_bench:max_train_instances=big_bench_few_shot_setting,task={task},subtask={subtask}"
        )
    for subject in MMLU_SUBJECTS:
        groups.setdefault("mmlu", []).append(f"mmlu:subject={subject},data_augmentation=canonical")
    groups["truthful_qa"] = ["truthful_qa:task=mc_single,data_augmentation=canonical"]
    groups["gsm"] = ["gsm"]
    groups["bbq"] = ["bbq:subject=all"]
    entries = []
    for (scenario, descriptions), share in zip(groups.items(), _split_budget(budget, len(groups)), strict=True):
        for description, n in zip(descriptions, _split_budget(share, len(descriptions)), strict=True):
            entries.append(SuiteEntry(description, scenario=scenario, instances=max(n, 1)))
    return tuple(entries)


def _challenge_2023_hidden() -> tuple[SuiteEntry, ...]:
    entries = [
        SuiteEntry("challenge_samsum", scenario="samsum", instances=1000),
        SuiteEntry("challenge_corr2cause", scenario="corr2cause", instances=1000),
    ]
    entries += [
        SuiteEntry(f"challenge_ethics:subset={s},data_augmentation=canonical", scenario=f"ethics_{s}", instances=300)
        for s in ("justice", "commonsense", "virtue", "deontology", "utilitarianism")
    ]
    entries += [
        SuiteEntry(f"math:subject={s},level={lvl},use_chain_of_thought=True", scenario="math", instances=36)
        for s in MATH_SUBJECTS
        for lvl in (1, 5)
    ]
    entries.append(SuiteEntry("summarization_cnndm", scenario="cnndm", instances=100, ranked=False))
    return tuple(entries)


CHALLENGE_2023_OPEN = Suite(
    name="challenge-2023-open",
    description="The 2023 open set: 29 BIG-bench tasks (0-3 shots), 55 MMLU subjects, TruthfulQA, GSM8K, BBQ.",
    entries=_challenge_2023_open(),
    main_metrics={"gsm": "final_number_exact_match"},
    time_limit_s=300 * 60,
    default_instances=100,
    offline=False,
    plugins=(),
)
CHALLENGE_2023_HIDDEN = Suite(
    name="challenge-2023-hidden",
    description="The 2023 hidden set: SAMSum, corr2cause, five ETHICS subsets, MATH with chain of thought, CNN/DM.",
    entries=_challenge_2023_hidden(),
    main_metrics={"samsum": "rouge_2", "math": "math_equiv_chain_of_thought", "cnndm": "rouge_2"},
    time_limit_s=600 * 60,
    default_instances=100,
    hidden=True,
    offline=False,
)

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        OFFLINE_SMOKE,
        OFFLINE_OPEN,
        OFFLINE_HIDDEN,
        PREFILL_MC,
        GENERATION,
        CHALLENGE_2023_OPEN,
        CHALLENGE_2023_HIDDEN,
    )
}


class UnknownSuite(KeyError):
    pass


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnknownSuite(f"unknown suite {name!r}; known: {', '.join(SUITES)}")


def list_suites() -> list[Suite]:
    return list(SUITES.values())


def parse_run_name(name: str) -> tuple[str, dict[str, str]]:
    """`"mmlu:subject=anatomy,model=x"` -> `("mmlu", {"subject": "anatomy", "model": "x"})`."""
    head, _, rest = name.partition(":")
    args = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        args[key] = value
    return head, args


# Run expanders rewrite these arguments (and add `model`), so a run name differs from its entry there.
_EXPANDED_ARGS = {"model", "model_deployment", "max_train_instances", "max_eval_instances", "data_augmentation"}


def entry_for_run(suite: Suite, run_name: str) -> SuiteEntry | None:
    """The suite entry a HELM run came from, matching the run spec name and its non-expanded args."""
    head, args = parse_run_name(run_name)
    for entry in suite.entries:
        e_head, e_args = parse_run_name(entry.description)
        if e_head != head:
            continue
        if all(args.get(k, "") == v for k, v in e_args.items() if k not in _EXPANDED_ARGS):
            return entry
    return None
