"""The HELM runner: stats parsing, progress, the result document, and the ways a job fails.

Tests about HELM and the runner (not the model) use `stub_server.py`, which answers instantly;
`test_runner_e2e.py` runs the real server.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from evaluation.engine import errors
from evaluation.engine.result import (
    SCHEMA_VERSION,
    ResultDocument,
    ResultVersionError,
    record_aspect,
    validate,
)
from evaluation.engine.runner import (
    HelmProgress,
    evaluate,
    model_facts,
    read_stats_file,
    write_conf,
    write_prod_env,
)
from evaluation.engine.suites import OFFLINE_SMOKE, SuiteEntry

DATA = Path(__file__).parent / "data"
STUB = [sys.executable, str(Path(__file__).parent / "stub_server.py"), "{port}"]


def test_stats_json_sample_becomes_flat_records():
    records = read_stats_file(DATA / "stats_sample.json", run="r1", scenario="offline_people_sentences")
    by_key = {(r.metric, r.perturbation, r.computed_on): r for r in records}
    em = by_key[("exact_match", None, None)]
    # HELM aggregates over train trials: one trial, so count 1.
    assert (em.run, em.scenario, em.split, em.count) == ("r1", "offline_people_sentences", "test", 1)
    assert em.value == 0.0
    assert by_key[("num_instances", None, None)].value == 6.0
    worst = by_key[("exact_match", "robustness", "worst")]
    assert record_aspect(worst) == "robustness"
    assert record_aspect(by_key[("exact_match", "fairness", "worst")]) == "fairness"
    assert record_aspect(by_key[("exact_match", "mild_mix", "perturbed")]) is None
    bias = by_key[("bias_metric:mode=representation,demographic_category=gender", None, None)]
    # HELM had no demographic word to count in that output: the record says so instead of a number.
    assert bias.count == 0 and bias.value is None and record_aspect(bias) == "bias"


def test_progress_follows_helm_log_and_reports_the_failed_run():
    events = []
    progress = HelmProgress(on_progress=events.append)
    for line in (DATA / "helm_log_with_failure.txt").read_text().splitlines(keepends=True):
        progress.feed(line)
    progress.close()
    assert progress.runs_total == 2
    failed, ok = progress.runs.values()
    assert failed.status == "failed" and failed.name.startswith("challenge_corr2cause")
    assert failed.error.startswith("FileNotFoundError: CHALLENGE_HIDDEN_DATA_DIR is not set")
    assert ok.status == "succeeded" and ok.eval_instances == 6 and ok.wall_seconds > 0
    assert [e["runs_done"] for e in events if e["event"] in ("run_failed", "run_finished")] == [1, 2]
    assert {e["event"] for e in events} >= {"planned", "run_started", "instances", "requests"}


def test_hidden_suites_do_not_name_runs_in_progress():
    events = []
    progress = HelmProgress(on_progress=events.append, hidden=True)
    for line in (DATA / "helm_log_with_failure.txt").read_text().splitlines(keepends=True):
        progress.feed(line)
    assert events and all(e["current_run"] is None for e in events)


def test_result_document_round_trips_and_checks_its_version():
    doc = ResultDocument(suite="offline-smoke", track_memory_gb=24, helm_version="0.5.16")
    doc.records = read_stats_file(DATA / "stats_sample.json", run="r1", scenario="s")
    again = ResultDocument.from_json(doc.to_json())
    assert again == doc
    data = json.loads(doc.to_json())
    data["schema_version"] = SCHEMA_VERSION.split(".")[0] + ".9"
    data["new_optional_field"] = 1
    assert ResultDocument.from_dict(data).suite == "offline-smoke"  # newer minor: readable
    data["schema_version"] = "2.0"
    with pytest.raises(ResultVersionError):
        ResultDocument.from_dict(data)
    bad = json.loads(doc.to_json())
    bad["records"][0]["value"] = "high"
    with pytest.raises(ValueError, match=r"records\[0\]\.value"):
        validate(bad)


def test_conf_carries_instance_counts_and_the_cap(tmp_path):
    entries = [SuiteEntry("offline:task=arithmetic", "a", 30), SuiteEntry("gsm", "gsm"), SuiteEntry("x:y=1", "x", 2)]
    text = write_conf(tmp_path / "c.conf", entries, max_eval_instances=5).read_text()
    assert '"offline:task=arithmetic,max_eval_instances=5"' in text
    assert '"gsm:max_eval_instances=5"' in text
    assert '"x:y=1,max_eval_instances=2"' in text


def test_prod_env_points_helm_at_the_server(tiny_llama_dir, tmp_path):
    import yaml

    facts = model_facts(tiny_llama_dir, None)
    assert facts["eos_token"] == "<|endoftext|>" and facts["max_sequence_length"] == 2048
    prod_env = write_prod_env(tmp_path, "http://127.0.0.1:9", facts)
    deployment = yaml.safe_load((prod_env / "model_deployments.yaml").read_text())["model_deployments"][0]
    assert deployment["client_spec"]["args"]["base_url"] == "http://127.0.0.1:9"
    tokenizer = yaml.safe_load((prod_env / "tokenizer_configs.yaml").read_text())["tokenizer_configs"][0]
    # HELM tokenizes in its own process, from the submission's files, never trusting remote code.
    assert tokenizer["tokenizer_spec"] == {
        "class_name": "helm.tokenizers.huggingface_tokenizer.HuggingFaceTokenizer",
        "args": {"pretrained_model_name_or_path": str(tiny_llama_dir), "trust_remote_code": False},
    }


def test_an_adapter_without_tokenizer_files_uses_its_bases(tmp_path, tiny_llama_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    facts = model_facts(adapter, tiny_llama_dir)
    assert facts["tokenizer_dir"] == str(tiny_llama_dir)
    assert facts["max_sequence_length"] == 2048  # the base's config, as the server reports it


def test_server_never_healthy_fails_with_its_log_tail(tmp_path):
    cmd = [sys.executable, "-c", "import time; print('loading shards 1/3', flush=True); time.sleep(60)"]
    with pytest.raises(errors.ServerUnhealthy) as caught:
        evaluate(model_dir=tmp_path, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path / "o",
                 server_cmd=cmd, health_timeout_s=2)  # fmt: skip
    assert "loading shards 1/3" in caught.value.log_tail
    doc = ResultDocument.from_json((tmp_path / "o" / "result.json").read_text())
    assert doc.status == "failed" and doc.errors[0]["type"] == "ServerUnhealthy"


def test_server_load_failure_keeps_the_servers_classification(tmp_path):
    line = json.dumps(
        {"error": {"type": "ModelTooLarge", "kind": "user", "message": "needs 30 GB, track allows 24 GB"}}
    )
    cmd = [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); sys.exit(3)"]
    with pytest.raises(errors.ModelTooLarge, match="needs 30 GB") as caught:
        evaluate(model_dir=tmp_path, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path, server_cmd=cmd)
    assert caught.value.kind == "user"


@pytest.mark.helm
def test_helm_past_its_time_limit_is_stopped(tmp_path):
    with pytest.raises(errors.HelmTimeout, match="time limit of 1 s") as caught:
        evaluate(model_dir=tmp_path, suite="offline-smoke", track_memory_gb=24, out_dir=tmp_path, server_cmd=STUB,
                 time_limit_s=1)  # fmt: skip
    assert caught.value.kind == "infra"
    assert json.loads((tmp_path / "result.json").read_text())["errors"][0]["type"] == "HelmTimeout"


@pytest.mark.helm
def test_a_failing_run_is_reported_while_the_others_count(tmp_path, monkeypatch):
    monkeypatch.delenv("CHALLENGE_HIDDEN_DATA_DIR", raising=False)
    suite = dataclasses.replace(
        OFFLINE_SMOKE,
        name="mixed",
        entries=(SuiteEntry("challenge_corr2cause", "corr2cause", 3), *OFFLINE_SMOKE.entries),
    )
    doc = evaluate(model_dir=tmp_path, suite=suite, track_memory_gb=24, out_dir=tmp_path, server_cmd=STUB, threads=2)
    assert doc.status == "partial"
    status = {r.scenario: r.status for r in doc.runs}
    assert status == {
        "corr2cause": "failed",
        "offline_people_sentences": "succeeded",
        "offline_unit_conversion": "succeeded",
    }
    failed = next(r for r in doc.runs if r.status == "failed")
    assert "CHALLENGE_HIDDEN_DATA_DIR" in failed.error
    assert doc.errors == [{"type": "RunFailed", "kind": "run", "message": failed.error, "run": failed.name}]
    assert {r.scenario for r in doc.records} == {"offline_people_sentences", "offline_unit_conversion"}
    # The stub always answers "she is a nurse": HELM's bias metric, on offline punkt_tab, has words to count.
    bias = [
        r
        for r in doc.records_for(aspect="bias")
        if r.metric.endswith("mode=representation,demographic_category=gender")
    ]
    assert bias and bias[0].value == pytest.approx(0.5)
    assert doc.efficiency.request_count == 3 and doc.efficiency.latency_p95_s == 0.9  # the stub's own /stats


def test_staged_helm_data_is_linked_into_the_job(tmp_path):
    from evaluation.engine.runner import link_helm_data_cache
    from evaluation.engine.stage_helm_data import stage_command

    cmd = stage_command("challenge-2023-open", tmp_path / "stage")
    assert cmd[-3:] == ["--cache-instances", "--cache-instances-only", "--skip-completed-runs"]
    assert "mmlu:subject=anatomy,data_augmentation=canonical" in (tmp_path / "stage" / "run_entries.conf").read_text()
    (tmp_path / "stage" / "benchmark_output" / "scenarios" / "mmlu").mkdir(parents=True)
    assert link_helm_data_cache(tmp_path / "job" / "helm", tmp_path / "stage")
    assert (tmp_path / "job" / "helm" / "scenarios" / "mmlu").is_dir()
    assert not link_helm_data_cache(tmp_path / "job2", None)


def test_the_kill_switch_stops_helm_run(tmp_path):
    """What the server watch pulls when the model server fails under a running helm-run."""
    import threading

    from evaluation.engine.runner import run_helm

    switch = threading.Event()
    threading.Timer(0.3, switch.set).start()
    code = run_helm(
        [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"],
        env=None, cwd=tmp_path, log_path=tmp_path / "helm.log", time_limit_s=300, progress=HelmProgress(),
        kill_switch=switch,
    )  # fmt: skip
    assert code == -9
    assert "working" in (tmp_path / "helm.log").read_text()


def test_the_server_watch_reports_a_server_that_dies_after_serving(tmp_path):
    from evaluation.engine.runner import ServerProcess, ServerWatch, free_port

    port = free_port()
    script = (
        "import http.server, threading, sys, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
        f"s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        "time.sleep(1.5); sys.exit(1)\n"
    )
    server = ServerProcess([sys.executable, "-c", script], port, tmp_path / "server.log")
    ready = []
    watch = ServerWatch(server, timeout_s=30, on_ready=lambda: ready.append(True))
    server.start()
    watch.start()
    assert watch.kill_switch.wait(30)
    watch.stop()
    server.stop()
    assert ready == [True]
    assert isinstance(watch.failure, errors.ServerCrashed)


def test_run_entries_are_split_by_scenario_and_balanced_by_instances():
    from evaluation.engine.runner import shard_entries

    entries = [
        SuiteEntry("mmlu:subject=a", "mmlu", 100),
        SuiteEntry("gsm", "gsm", 300),
        SuiteEntry("mmlu:subject=b", "mmlu", 100),
        SuiteEntry("bbq", "bbq", 150),
        SuiteEntry("tqa", "truthful_qa", 20),
    ]
    shards = shard_entries(entries, 3, default_instances=50)
    assert [[e.description for e in shard] for shard in shards] == [
        ["gsm"],
        ["mmlu:subject=a", "mmlu:subject=b"],  # one scenario, one process: its data is prepared once
        ["bbq", "tqa"],
    ]
    assert shard_entries(entries, 1, 50) == [entries]
    assert len(shard_entries(entries[:2], 8, 50)) == 2  # never more processes than scenarios


def test_an_interrupted_evaluation_stops_every_helm_run_shard(tmp_path):
    """A cancelled job interrupts the thread waiting on the shards: none of them may run on."""
    import os
    import signal
    import threading
    import time

    import psutil

    from evaluation.engine.runner import CombinedProgress, run_helm_shards

    class Cancelled(Exception):
        pass

    def cancel(signum, frame):
        raise Cancelled

    script = "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)"
    logs = [tmp_path / "helm.log", tmp_path / "helm-1.log"]
    pid_files = [tmp_path / "0.pid", tmp_path / "1.pid"]

    def cancel_once_both_run():
        deadline = time.monotonic() + 60
        while not all(f.exists() for f in pid_files) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGALRM)  # handled in the main thread, which waits on the shards

    progress = CombinedProgress(None, False, 2)
    wound_up = []
    for part, delay in zip(progress.parts, (0.5, 0.0), strict=True):  # the first shard winds up slowly

        def close(part=part, close=part.close, delay=delay):
            time.sleep(delay)
            close()
            wound_up.append(part)

        part.close = close
    previous = signal.signal(signal.SIGALRM, cancel)
    threading.Thread(target=cancel_once_both_run, daemon=True).start()
    try:
        with pytest.raises(Cancelled):
            run_helm_shards(
                [[sys.executable, "-c", script, str(f)] for f in pid_files], env=dict(os.environ), cwd=tmp_path, log_paths=logs,
                time_limit_s=300, progress=progress, kill_switch=threading.Event(), standbys=[None, None],
            )  # fmt: skip
    finally:
        signal.signal(signal.SIGALRM, previous)
    # Every shard finished (its process killed and reaped) before the cancellation went on.
    assert len(wound_up) == 2
    pids = [int(f.read_text()) for f in pid_files]
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
