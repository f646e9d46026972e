"""The demo story's parts: a real CPU fine-tune that lowers the loss, and a submission through the
real upload service (the worker then validates and evaluates it; see seed_demo_story)."""

import json

import pytest

from evaluation.models import BaseModel, Submission
from leaderboard.demo_story import DATA_DIR, finetune_tiny, pack, training_texts
from leaderboard.management.commands.seed_demo_story import STORY_BASE_MODEL, submit
from tests.factories import TeamFactory, TrackFactory


def test_training_texts_come_from_the_train_splits_only():
    texts = training_texts()
    test_questions = {
        json.loads(line)["input"]["text"]
        for path in DATA_DIR.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line)["split"] == "test"
    }
    assert len(texts) >= 1000 and all(" Answer: " in t for t in texts)
    assert not {t.split(" Answer: ")[0] for t in texts} & test_questions


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("story") / "model"
    return out, finetune_tiny(out, budget_seconds=2, seed=1)


def test_a_bigger_budget_is_a_real_fine_tune_that_lowers_the_loss(finetuned):
    out, stats = finetuned
    assert stats["steps"] > 5 and stats["last_loss"] < stats["first_loss"] - 0.5
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "FINETUNE.json").read_text())["steps"] == stats["steps"]


@pytest.mark.django_db
def test_the_model_is_submitted_through_the_real_upload_service(finetuned, tmp_path):
    out, stats = finetuned
    track = TrackFactory(slug="4090")
    team = TeamFactory(challenge=track.challenge)
    BaseModel.objects.create(
        name=STORY_BASE_MODEL, architecture="LlamaForCausalLM", parameter_count=100_000, licence="apache-2.0"
    )
    submission = submit(
        user=team.captain,
        track=track,
        archive=pack(out, tmp_path / "m.tar.gz"),
        hours=stats["seconds"] / 3600,
        budget=2,
    )
    assert submission.status == Submission.Status.VALIDATING  # the validation task runs after commit
    assert submission.team == team and submission.finetune_gpu_hours == pytest.approx(stats["seconds"] / 3600, abs=1e-5)
    assert submission.size_bytes == (tmp_path / "m.tar.gz").stat().st_size
