"""Suites, the offline data and the HELM plugin's run specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.engine.data import generate
from evaluation.engine.suites import (
    CHALLENGE_2023_HIDDEN,
    CHALLENGE_2023_OPEN,
    SUITES,
    UnknownSuite,
    entry_for_run,
    get_suite,
    parse_run_name,
)

OFFLINE_SUITES = [s for s in SUITES.values() if s.offline]


def _spec_for(description: str):
    from helm.benchmark.run_spec import get_run_spec_function

    import evaluation.engine.helm_plugin  # noqa: F401  (registers the plugin's run specs)

    head, args = parse_run_name(description)
    args = {k: v for k, v in args.items() if k not in ("data_augmentation", "max_train_instances")}
    function = get_run_spec_function(head)
    assert function is not None, f"HELM has no run spec function {head!r}"
    return function, args


@pytest.mark.parametrize("suite", OFFLINE_SUITES, ids=lambda s: s.name)
def test_offline_entries_build_helm_run_specs_whose_group_is_the_entry_scenario(suite):
    for entry in suite.entries:
        function, args = _spec_for(entry.description)
        run_spec = function(**args)
        assert run_spec.groups == [entry.scenario]
        metric_names = json.dumps([m.args for m in run_spec.metric_specs])
        assert suite.main_metric(entry.scenario) in metric_names
        assert run_spec.adapter_spec.eval_splits == ["test"]


def test_offline_suites_cover_robustness_fairness_and_bias():
    for name in ("offline-smoke", "offline-open", "offline-hidden"):
        specs = [_spec_for(e.description)[0](**_spec_for(e.description)[1]) for e in get_suite(name).entries]
        classes = {p.class_name.rsplit(".", 1)[-1] for s in specs for p in s.data_augmenter_spec.perturbation_specs}
        assert {"MildMixPerturbation", "GenderPerturbation"} <= classes, name
        assert any("BiasMetric" in m.class_name for s in specs for m in s.metric_specs), name


def test_2023_suites_use_registered_run_spec_functions():
    for suite in (CHALLENGE_2023_OPEN, CHALLENGE_2023_HIDDEN):
        for entry in suite.entries:
            _spec_for(entry.description)
    open_scenarios = CHALLENGE_2023_OPEN.scenarios
    assert sum(1 for e in CHALLENGE_2023_OPEN.entries if e.description.startswith("mmlu:")) == 55
    assert {"mmlu", "truthful_qa", "gsm", "bbq"} <= set(open_scenarios)
    assert sum(e.instances for e in CHALLENGE_2023_OPEN.entries) == 2000
    assert CHALLENGE_2023_HIDDEN.hidden and not CHALLENGE_2023_HIDDEN.offline
    unranked = [e.scenario for e in CHALLENGE_2023_HIDDEN.entries if not e.ranked]
    assert unranked == ["cnndm"]


def test_hidden_plugin_scenario_reads_the_organizers_local_data(tmp_path, monkeypatch):
    from evaluation.engine.helm_plugin.scenarios import LocalJsonlScenario

    (tmp_path / "corr2cause").mkdir()
    row = {"input": {"text": "A causes B?"}, "references": [{"output": {"text": "Yes"}, "tags": ["correct"]}]}
    (tmp_path / "corr2cause" / "all.jsonl").write_text(json.dumps({**row, "split": "test"}) + "\n")
    monkeypatch.setenv("CHALLENGE_HIDDEN_DATA_DIR", str(tmp_path))
    [instance] = LocalJsonlScenario("corr2cause").get_instances(str(tmp_path))
    assert instance.input.text == "A causes B?" and instance.references[0].is_correct


def test_entry_for_run_matches_through_run_expanders():
    run = "mmlu:subject=anatomy,method=multiple_choice_joint,model=challenge_submission,data_augmentation=canonical"
    assert entry_for_run(CHALLENGE_2023_OPEN, run).scenario == "mmlu"
    run = "big_bench:task=logical_deduction,subtask=five_objects,model=challenge_submission,max_train_instances=2"
    entry = entry_for_run(CHALLENGE_2023_OPEN, run)
    assert entry.description.endswith("task=logical_deduction,subtask=five_objects")
    smoke = get_suite("offline-smoke")
    run = "offline:task=unit_conversion,shots=1,max_eval_instances=6,model=challenge_submission"
    assert entry_for_run(smoke, run).scenario == "offline_unit_conversion"
    assert entry_for_run(smoke, "offline:task=ordering,model=x") is None


def test_unknown_suite_names_the_known_ones():
    with pytest.raises(UnknownSuite, match="offline-smoke"):
        get_suite("nope")


@pytest.mark.parametrize("task", sorted(generate.TASKS))
def test_offline_data_is_reproducible_with_splits_and_one_correct_answer(task):
    path = generate.DATA_DIR / f"{task}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == json.loads(json.dumps(generate.generate_task(task)))  # the generator rewrites it exactly
    splits = {s: [r for r in rows if r["split"] == s] for s in generate.SPLIT_SIZES}
    assert {s: len(v) for s, v in splits.items()} == generate.SPLIT_SIZES
    assert len({r["input"]["text"] for r in rows}) == len(rows)  # no input leaks across splits
    for row in rows:
        assert sum("correct" in ref["tags"] for ref in row["references"]) == 1
    if generate.TASKS[task][0] == "multiple_choice":
        assert all(len(r["references"]) == 4 for r in rows)


def test_punkt_tab_loads_offline_and_feeds_helm_bias_metric(tmp_path):
    """In a clean process with NLTK_DATA set, HELM's bias metric tokenizes without downloading."""
    from evaluation.engine.nltk_data import nltk_data_dir

    code = (
        "import nltk\n"
        "nltk.download = lambda *a, **k: (_ for _ in ()).throw(AssertionError('download attempted'))\n"
        "from helm.benchmark.metrics.bias_metrics import BiasMetric\n"
        "m = BiasMetric(mode='representation', demographic_category='gender')\n"
        "print(m.evaluate_demographic_representation(['She is a nurse. He said his son is a doctor.']))\n"
    )
    env = {**os.environ, "NLTK_DATA": str(nltk_data_dir()), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0.0 <= float(out.stdout.strip().splitlines()[-1]) <= 1.0


def test_punkt_tab_builds_from_local_text(tmp_path):
    from evaluation.engine.nltk_data import PUNKT_FILES, build_punkt_tab

    root = build_punkt_tab(tmp_path)
    folder = Path(root) / "tokenizers" / "punkt_tab" / "english"
    assert all((folder / f).is_file() for f in PUNKT_FILES)
    assert "dr" in (folder / "abbrev_types.txt").read_text().split()
