"""benchmarks/spy_summary.py tells each process of an evaluation by its command line."""

from __future__ import annotations

from benchmarks.spy_summary import kind_of, summarize

STANDBY = "process 41:python3 -m evaluation.engine.standby --ready-fd 7 {}"


def test_standbys_given_the_ready_pipe_count_as_what_they_run():
    # The runner starts standbys with `--ready-fd N KIND` (session 16 found every sample counted "other").
    assert kind_of([STANDBY.format("helm"), "run (helm/benchmark/run.py:10)"]) == "helm-run"
    assert kind_of([STANDBY.format("server"), "serve (evaluation/engine/server/app.py:5)"]) == "server"
    front = [STANDBY.format("server"), STANDBY.format("server"), "handle (evaluation/engine/server/split.py:9)"]
    assert kind_of(front) == "server front"
    assert kind_of(["process 9:python3 -m evaluation.engine.standby helm"]) == "helm-run"
    assert kind_of(["process 3:python3 -m benchmarks.helm_speed --size 1b"]) == "other"


def test_the_summary_groups_samples_by_kind(tmp_path):
    raw = tmp_path / "spy.raw"
    raw.write_text(
        f"{STANDBY.format('helm')};run (helm/benchmark/run.py:10);execute (helm/x.py:3) 30\n"
        f"{STANDBY.format('server')};generate (evaluation/engine/server/generation.py:5) 10\n"
    )
    text = summarize(str(raw), None, 10)
    assert "## helm-run: 30 samples" in text and "## server: 10 samples" in text
    assert "100.0% execute helm/x.py" in text


def test_standbys_importing_while_they_wait_are_counted_apart(tmp_path):
    raw = tmp_path / "spy.raw"
    raw.write_text(
        f"{STANDBY.format('helm')};<module> (evaluation/engine/standby.py:120);"
        "preload (evaluation/engine/standby.py:45);<module> (transformers/__init__.py:1) 90\n"
        f"{STANDBY.format('helm')};run (helm/benchmark/run.py:10);execute (helm/x.py:3) 10\n"
    )
    text = summarize(str(raw), None, 10)
    assert "## standby imports: 90 samples" in text and "## helm-run: 10 samples" in text
    assert "100.0% execute helm/x.py" in text  # the run's own share, not 10 %
