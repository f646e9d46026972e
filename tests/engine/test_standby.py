"""Standby processes do at rest what every evaluation process would do first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
from evaluation.engine import standby
standby.preload("helm")
from helm.benchmark import config_registry
from helm.benchmark.model_deployment_registry import get_model_deployment
from helm.benchmark.tokenizer_config_registry import get_tokenizer_config
assert get_model_deployment("huggingface/gpt2").tokenizer_name == "huggingface/gpt2"
assert get_tokenizer_config("huggingface/gpt2") is not None
parsed = []
config_registry.register_configs_from_directory = parsed.append
config_registry.register_builtin_configs_from_helm_package()  # what helm-run calls first: nothing left to do
assert parsed == []
import gc, sys
assert "evaluation.engine.helm_plugin" in sys.modules
from helm.benchmark.metrics import metric
from evaluation.engine import helm_fast
assert metric.compute_worst_case_metrics is helm_fast.compute_worst_case_metrics  # installed while waiting
assert gc.get_freeze_count() > 100_000  # the imports are out of every later full collection
print("ok")
"""


def test_a_helm_standby_has_helm_s_own_configs_parsed_the_plugin_imported_and_helm_fast_installed():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_standbys_say_when_their_imports_are_done():
    from evaluation.engine import runner

    try:
        runner.start_standbys(1)
        assert not runner.wait_standbys_ready(0.01)  # importing torch and HELM takes seconds
        assert runner.wait_standbys_ready(300)
        assert all(s.ready_fd is None and s.process.poll() is None for s in runner._standbys)
        assert runner.wait_standbys_ready(0)  # and stays so
    finally:
        runner.discard_standbys()


SERVER_CHECK = """
from evaluation.engine import standby
standby.preload("server")
import sys
import torch
from triton.runtime.cache import triton_key
assert triton_key.cache_info().currsize == 1  # the hash of Triton's files: the first kernel's lookup needs it
assert "triton.experimental.gluon" in sys.modules
assert not torch.cuda.is_initialized()  # still no GPU memory held while waiting
print("ok")
"""


def test_a_server_standby_has_tritons_cache_key_computed_and_touches_no_gpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SERVER_CHECK], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
