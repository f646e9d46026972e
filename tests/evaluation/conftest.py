"""Fixtures of tests/evaluation: tiny real models built once per session, a team ready to submit."""

import json
import shutil
from pathlib import Path

import pytest

from tests.factories import (
    BaseModelFactory,
    ChallengeFactory,
    MembershipFactory,
    TeamFactory,
    TrackFactory,
    UserFactory,
)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (the allowed base), a LoRA adapter on it, and a sharded copy: real files from transformers/peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evaluation.engine.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    base = build_tiny_model(root / "tiny-llama", "llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(base)
    sharded = root / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(base / name, sharded / name)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "tiny-llama"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    gpt2 = build_tiny_model(root / "tiny-gpt2", "gpt2", seed=0)
    return {"full": base, "adapter": adapter, "sharded": sharded, "gpt2": gpt2}


@pytest.fixture
def model_copy(model_dirs, tmp_path):
    """A writable copy of one of the session's models."""

    def copy(kind: str = "full") -> Path:
        dest = tmp_path / f"copy-{kind}"
        shutil.copytree(model_dirs[kind], dest)
        return dest

    return copy


@pytest.fixture
def base_model(db, model_dirs):
    return BaseModelFactory(weights_path=str(model_dirs["full"]))


@pytest.fixture
def challenge(db):
    return ChallengeFactory(daily_submission_quota=3)


@pytest.fixture
def track(challenge):
    return TrackFactory(
        challenge=challenge, slug="4090", name="RTX 4090", gpu_memory_gb=24, max_upload_bytes=50 * 1024**2
    )


@pytest.fixture
def team(challenge):
    return TeamFactory(challenge=challenge)


@pytest.fixture
def member(team):
    return team.captain


@pytest.fixture
def teammate(team):
    return MembershipFactory(team=team).user


@pytest.fixture
def outsider(challenge):
    other = TeamFactory(challenge=challenge)
    return other.captain


@pytest.fixture
def loner(db):
    return UserFactory()


@pytest.fixture(autouse=True)
def _eager_celery(request):
    """Tasks sent by the code under test run in-process (the worker tests of the pipeline use a real one)."""
    from portal.celery import app

    if request.node.get_closest_marker("worker"):
        yield
        return
    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


@pytest.fixture(autouse=True)
def gpu_messages(request, monkeypatch):
    """Messages for the GPU queues, recorded instead of evaluated in-process.

    Evaluating belongs to a GPU worker: the pipeline's service tests call its service directly and
    its worker tests run a real worker, so an eager evaluation here would only run HELM by surprise.
    """
    from evaluation.tasks import submission_evaluate

    if request.node.get_closest_marker("worker"):
        return None  # a real worker takes them
    sent: list[dict] = []
    monkeypatch.setattr(submission_evaluate, "apply_async", lambda *args, **kwargs: sent.append(kwargs))
    return sent


@pytest.fixture
def live(live_server):
    return live_server
