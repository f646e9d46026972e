"""Pre-stage HELM's data for a suite on a connected machine, for workers without internet.

    python -m evaluation.engine.stage_helm_data challenge-2023-open --out helm-cache

Runs `helm-run --cache-instances --cache-instances-only` on the suite's entries: every scenario
downloads and prepares its instances under `helm-cache/benchmark_output/scenarios/`, and no model is
called. Copy the folder to the workers and set `HELM_DATA_CACHE` to it there; the runner links its
`scenarios/` into each job's HELM output. Datasets loaded through Hugging Face `datasets` land in its
own cache (`HF_HOME`): copy that too and keep `HF_DATASETS_OFFLINE=1` on the workers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from evaluation.engine.runner import REPO_ROOT, helm_command, write_conf, write_prod_env
from evaluation.engine.suites import get_suite


def stage_command(suite_name: str, out: Path, max_eval_instances: int | None = None) -> list[str]:
    suite = get_suite(suite_name)
    out.mkdir(parents=True, exist_ok=True)
    # No model is called with --cache-instances-only; the deployment only has to exist.
    facts = {"eos_token": "</s>", "bos_token": "<s>", "max_sequence_length": 2048}
    prod_env = write_prod_env(out / "prod_env", "http://127.0.0.1:9", facts)
    conf = write_conf(out / "run_entries.conf", suite.entries, max_eval_instances)
    cmd = helm_command(conf, "stage", out / "benchmark_output", prod_env, 4, suite.default_instances, suite.plugins)
    return cmd + ["--cache-instances", "--cache-instances-only", "--skip-completed-runs"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-eval-instances", type=int)
    args = parser.parse_args(argv)
    cmd = stage_command(args.suite, args.out.resolve(), args.max_eval_instances)
    print(" ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, env=env, cwd=args.out).returncode


if __name__ == "__main__":
    sys.exit(main())
