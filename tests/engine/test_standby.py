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
import sys
assert "evaluation.engine.helm_plugin" in sys.modules
print("ok")
"""


def test_a_helm_standby_has_helm_s_own_configs_parsed_and_the_plugin_imported():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
