"""The `llmec` command line end to end against a live test server: a tiny real model is packed, uploaded
through tus, validated, queued; the CLI follows it, and a second CLI call cancels it.

Following all the way to "scored" needs a real Celery worker (tests/workers.py) consuming the cpu queue and the
track's GPU queue: `test_submit_follows_to_scored_with_a_worker`, marked `worker` and `helm`.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.utils import timezone

from evaluation.engine.tiny import build_tiny_model
from evaluation.models import BaseModel, Submission
from evaluation.services.validation import submission_validate
from leaderboard.models import Standing
from portal.api.services import api_token_create
from tests.factories import ChallengeFactory, TeamFactory, TrackFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLI_DIR = Path(__file__).resolve().parents[2] / "cli"


class Cli:
    """Runs `python -m llmec` in a subprocess and collects its output line by line."""

    def __init__(self, server: str, token: str, tmp_path: Path):
        self.env = {
            **os.environ,
            "PYTHONPATH": str(CLI_DIR),
            "LLMEC_SERVER": server,
            "LLMEC_TOKEN": token,
            "LLMEC_CONFIG": str(tmp_path / "config.toml"),
            "PYTHONUNBUFFERED": "1",
        }

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "llmec", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> tuple[subprocess.Popen, list[str]]:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmec", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
        return process, lines


def _wait(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    # kombu's filesystem broker writes its `control/` folder in the working directory: keep it out of the repo.
    monkeypatch.chdir(tmp_path)
    challenge = ChallengeFactory(daily_submission_quota=5)
    track = TrackFactory(challenge=challenge, slug="4090", name="RTX 4090", gpu_memory_gb=24)
    BaseModel.objects.create(
        name="tiny-llama", architecture="LlamaForCausalLM", parameter_count=200_000, licence="apache-2.0"
    )
    captain = UserFactory(email="captain@cli.example")
    team = TeamFactory(challenge=challenge, captain=captain, name="CLI Team", slug="cli-team")
    _, token = api_token_create(user=captain, name="cli")
    model = build_tiny_model(tmp_path / "out", arch="llama")
    return {"track": track, "team": team, "token": token, "model": model}


def test_submit_uploads_follows_to_queued_and_cancel_stops_it(live_server, tmp_path, setup):
    cli = Cli(live_server.url, setup["token"], tmp_path)
    process, lines = cli.start(
        "submit",
        "--track", "4090",
        "--model", str(setup["model"]),
        "--base", "tiny-llama",
        "--hours", "0.1",
        "--recipe", "https://example.org/recipe/commit/abc",
        "--datasets", "offline arithmetic (CC-BY-4.0)",
        "--notes", "end-to-end test",
        "--interval", "0.3",
    )  # fmt: skip
    try:
        _wait(
            lambda: Submission.objects.filter(status=Submission.Status.VALIDATING).exists(),
            what="the upload to finish: " + "".join(lines),
        )
        submission = Submission.objects.get()
        # What the CPU worker's validation task does; the broker in tests has no consumer.
        submission = submission_validate(submission_id=submission.pk)
        assert submission.status == Submission.Status.QUEUED, submission.status_reason
        _wait(lambda: any("queued" in line for line in lines), timeout=60, what="the CLI to see the queue")
        assert any("position 1" in line for line in lines), "".join(lines)

        cancelled = cli.run("cancel", str(submission.pk))
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"Submission #{submission.pk} is now cancelled." in cancelled.stdout
        assert process.wait(timeout=60) == 1  # followed to the end, and it did not end scored
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines)
    assert "Packed" in output and f"Created submission #{submission.pk} on track 4090." in output
    assert "Uploading 100.0%" in output
    assert f"#{submission.pk} cancelled" in output
    submission.refresh_from_db()
    assert submission.sha256 and submission.size_bytes > 0
    assert submission.notes == "end-to-end test" and submission.team == setup["team"]

    status = cli.run("status")
    assert status.returncode == 0 and f"{submission.pk:>6}  4090" in status.stdout and "cancelled" in status.stdout
    detail = cli.run("status", str(submission.pk))
    assert "uploading → validating" in detail.stdout and "queued → cancelled" in detail.stdout


def test_cli_errors_are_one_clear_line(live_server, tmp_path, setup):
    cli = Cli(live_server.url, setup["token"], tmp_path)
    unknown_base = cli.run(
        "submit", "--track", "4090", "--model", str(setup["model"]), "--base", "gpt-17",
        "--hours", "1", "--recipe", "https://example.org/r", "--datasets", "x", "--no-follow",
    )  # fmt: skip
    assert unknown_base.returncode == 2
    assert unknown_base.stderr.strip().splitlines() == [
        "llmec: base_model: 'gpt-17' is not on the allow-list of base models. (HTTP 400)"
    ]
    too_long = cli.run(
        "submit", "--track", "4090", "--model", str(setup["model"]), "--base", "tiny-llama",
        "--hours", "99", "--recipe", "https://example.org/r", "--datasets", "x", "--no-follow",
    )  # fmt: skip
    assert too_long.returncode == 2 and "at most 24 GPU-hours" in too_long.stderr
    bad_token = Cli(live_server.url, "llmec_not-a-token", tmp_path).run("status")
    assert bad_token.returncode == 2 and bad_token.stderr.strip() == "llmec: Unknown API token. (HTTP 401)"
    not_a_folder = cli.run(
        "submit", "--track", "4090", "--model", str(tmp_path / "nowhere"), "--base", "tiny-llama",
        "--hours", "1", "--recipe", "https://example.org/r", "--no-follow",
    )  # fmt: skip
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr
    unreachable = Cli("http://127.0.0.1:9", setup["token"], tmp_path).run("status")
    assert unreachable.returncode == 2 and "Cannot reach http://127.0.0.1:9" in unreachable.stderr
    board = cli.run("leaderboard", "--track", "4090")
    assert board.returncode == 0 and "No scored entries yet." in board.stdout
    missing = cli.run("leaderboard", "--track", "h100")
    assert missing.returncode == 2 and "There is no track 'h100'." in missing.stderr


@pytest.mark.worker
@pytest.mark.helm
def test_submit_follows_to_scored_with_a_worker(live_server, tmp_path, setup, workers):
    """`llmec submit` uploads; a real worker (cpu and the track's GPU queue) validates, evaluates through HELM
    and recomputes the standings; the CLI follows it to "scored" and prints the aspect and final scores."""
    challenge = setup["track"].challenge
    challenge.hidden_revealed_at = timezone.now()  # so that the final score is public and printed
    challenge.save(update_fields=["hidden_revealed_at"])
    workers.start(setup["track"], suites="open=offline-smoke,hidden=offline-smoke", name="cli-e2e@host")
    cli = Cli(live_server.url, setup["token"], tmp_path)
    result = cli.run(
        "submit", "--track", "4090", "--model", str(setup["model"]), "--base", "tiny-llama",
        "--hours", "0.1", "--recipe", "https://example.org/r", "--datasets", "x", "--interval", "0.5",
        timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr + workers.logs()
    submission = Submission.objects.get()
    assert submission.status == Submission.Status.SCORED
    standing = Standing.objects.get(submission=submission, snapshot__is_current=True)
    out = result.stdout
    assert f"Created submission #{submission.pk} on track 4090." in out and "Uploaded." in out
    assert f"#{submission.pk} running · hidden suite" in out and f"Scored. Submission #{submission.pk}:" in out
    for aspect in ("accuracy", "robustness", "fairness", "bias", "efficiency"):
        line = next(line for line in out.splitlines() if line.strip().startswith(aspect))
        expected = [standing.aspect(suite, aspect) for suite in ("open", "hidden")]
        assert line.split()[1:] == ["—" if v is None else f"{v:.4f}" for v in expected], line
    assert f"final score {standing.final_score:.4f}  (rank 1)" in out
