"""End to end, offline: the real model server with a tiny model on CPU, real helm-run, the offline suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.engine import errors
from evaluation.engine.result import ResultDocument, validate
from evaluation.engine.runner import evaluate

pytestmark = [pytest.mark.helm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def scores(doc):
    """Every statistic but measured times. Logprobs may move in the last float bits between two
    evaluations: which requests share a batch depends on when they arrive."""
    return {(r.run, r.metric, r.split, r.perturbation): r.value for r in doc.records if "runtime" not in r.metric}


def test_offline_smoke_through_real_helm_and_server_has_all_five_aspects(tiny_llama_dir, tmp_path):
    events = []
    doc = evaluate(
        model_dir=tiny_llama_dir,
        suite="offline-smoke",
        track_memory_gb=24,
        out_dir=tmp_path,
        threads=4,
        device="cpu",
        on_progress=events.append,
    )
    assert doc.status == "succeeded", doc.errors
    assert [r.status for r in doc.runs] == ["succeeded", "succeeded"]
    assert {r.scenario for r in doc.runs} == {"offline_people_sentences", "offline_unit_conversion"}
    assert all(r.instances == 6 and r.wall_seconds > 0 for r in doc.runs)

    # Accuracy, robustness, fairness and bias from HELM; efficiency measured by the engine.
    for aspect in ("accuracy", "robustness", "fairness", "bias"):
        assert doc.records_for(aspect=aspect), aspect
    main = [r for r in doc.records_for(aspect="accuracy") if r.metric == "exact_match" and r.split == "test"]
    assert len(main) == 2 and all(0.0 <= r.value <= 1.0 for r in main)
    worst = {r.perturbation for r in doc.records if r.metric == "exact_match" and r.computed_on == "worst"}
    assert {"robustness", "fairness"} <= worst
    eff = doc.efficiency
    assert eff.request_count > 0 and eff.output_tokens > 0 and eff.output_tokens_per_second > 0
    assert eff.latency_mean_s > 0 and eff.latency_p95_s >= eff.latency_mean_s * 0.5
    assert eff.wall_seconds >= eff.helm_seconds > 0 and eff.gpu_seconds > 0
    assert eff.parameter_count == doc.model["parameters"] > 0 and eff.device == "cpu"
    assert eff.peak_gpu_memory_bytes is None  # measured on CPU: no GPU figure is invented
    assert doc.hardware.torch_version and doc.hardware.cpu_count

    # The document on disk is the same one, and it validates.
    stored = json.loads((tmp_path / "result.json").read_text())
    validate(stored)
    assert ResultDocument.from_dict(stored) == doc

    finished = [e for e in events if e.get("event") == "run_finished"]
    assert [e["runs_done"] for e in finished] == [1, 2] and finished[-1]["runs_total"] == 2
    # HELM stayed offline: it never tried to fetch NLTK data or anything else.
    log = (tmp_path / "helm.log").read_text()
    assert "Downloading" not in log and "nltk_data" not in log.replace(str(REPO), "")


def test_cli_evaluate_end_to_end(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "evaluation.engine", "evaluate", "--model", str(tiny_gpt2_dir)]
    cmd += ["--suite", "offline-smoke", "--track-memory-gb", "24", "--out", str(out), "--threads", "4"]
    cmd += ["--max-eval-instances", "3", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2/2] run finished" in proc.stderr
    assert "suite offline-smoke: succeeded" in proc.stdout
    doc = ResultDocument.from_json((out / "result.json").read_text())
    assert [r.instances for r in doc.runs] == [3, 3]
    assert doc.model["parameters"] == doc.efficiency.parameter_count > 0


def test_cli_list_suites_and_bad_suite():
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.engine", "list-suites", "--json"], cwd=REPO, capture_output=True, text=True
    )
    names = [s["name"] for s in json.loads(proc.stdout)]
    assert {"offline-smoke", "offline-open", "offline-hidden", "prefill-mc", "generation"} <= set(names)
    assert {"challenge-2023-open", "challenge-2023-hidden"} <= set(names)
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation.engine", "evaluate", "--model", ".", "--suite", "nope"]
        + ["--track-memory-gb", "24", "--out", "/tmp/unused"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 64 and "unknown suite 'nope'" in proc.stderr


def test_a_model_too_large_for_the_track_fails_the_job_while_helm_starts_beside_it(tiny_llama_dir, tmp_path):
    """helm-run starts with the server; the server's load error, not HELM's waiting, ends the job."""
    with pytest.raises(errors.ModelTooLarge, match="track 4090 allows"):
        evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=0.0001, out_dir=tmp_path,
                 device="cpu", track_name="4090")  # fmt: skip
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["status"] == "failed" and doc["errors"][0]["type"] == "ModelTooLarge"
    assert not list((tmp_path / "helm").glob("runs/*/*/stats.json"))  # HELM was stopped, not left to fail


def test_standbys_take_over_the_next_evaluation_with_the_same_results(tiny_llama_dir, tmp_path):
    from evaluation.engine import runner

    try:
        first = evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path / "1",
                         device="cpu", threads=4, standby=True)  # fmt: skip
        waiting = {s.process.pid for s in runner._standbys}
        assert sorted(s.kind for s in runner._standbys) == ["helm", "server"]
        second = evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path / "2",
                          device="cpu", threads=4, standby=True)  # fmt: skip
        # The second evaluation's server and helm-run were those standbys; fresh ones now wait.
        assert '"status": "ready"' in (tmp_path / "2" / "server.log").read_text()
        assert sorted(s.kind for s in runner._standbys) == ["helm", "server"]
        assert not waiting & {s.process.pid for s in runner._standbys}
        assert second.status == first.status == "succeeded"

        assert scores(second) == pytest.approx(scores(first), rel=1e-5, abs=1e-9)
    finally:
        runner.discard_standbys()
    assert not runner._standbys


def test_with_cores_to_spare_the_next_standbys_start_as_an_evaluation_begins(tiny_llama_dir, tmp_path, monkeypatch):
    """A worker with a queue starts the next evaluation at once: its standbys must have imported by then."""
    from evaluation.engine import runner

    monkeypatch.setattr(runner, "standbys_beside_evaluation", lambda helm_processes: True)
    seen: list[set[int]] = []

    def during(event):
        if event["event"] == "run_finished":
            seen.append({s.process.pid for s in runner._standbys})

    try:
        runner.start_standbys()
        taken = {s.process.pid for s in runner._standbys}
        doc = evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path,
                       device="cpu", threads=4, standby=True, on_progress=during)  # fmt: skip
        assert doc.status == "succeeded"
        # While its runs went on, two fresh standbys (a server and a helm-run) were already waiting.
        assert seen and all(len(pids) == 2 and not pids & taken for pids in seen)
        assert {s.process.pid for s in runner._standbys} == seen[0]  # and no more were started after it
    finally:
        runner.discard_standbys()


def test_run_entries_split_over_helm_processes_score_as_one_process(tiny_llama_dir, tmp_path):
    events = []
    one = evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path / "1",
                   device="cpu", threads=4, helm_processes=1)  # fmt: skip
    two = evaluate(model_dir=tiny_llama_dir, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path / "2",
                   device="cpu", threads=4, helm_processes=2, on_progress=events.append)  # fmt: skip
    assert (tmp_path / "2" / "helm-1.log").exists()  # two helm-run processes ran
    assert two.status == one.status == "succeeded"
    assert scores(two) == pytest.approx(scores(one), rel=1e-5, abs=1e-9)
    finished = [e for e in events if e["event"] == "run_finished"]
    assert [e["runs_done"] for e in finished] == [1, 2] and finished[-1]["runs_total"] == 2
