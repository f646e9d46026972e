"""HELM's own Python against helm_fast's replacements, on the files of a real run, plus one full
garbage collection in a helm process with and without the imports frozen.

    python -m benchmarks.helm_speed --size tiny --suites prefill-mc --modes ours --instances prefill-mc=300 \\
        --helm-processes 3 --out /tmp/hs_tiny            # any HELM run folder will do
    python -m benchmarks.helm_python /tmp/hs_tiny [--repeat 3]

For the first run folder found under the path (one holding scenario_state.json and
per_instance_stats.json): seconds for HELM's `compute_worst_case_metrics`, `asdict_without_nones`
and `json.dumps(indent=2)` and for helm_fast's, best of `--repeat`, each pair checked equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GC_CHILD = """
import gc, sys, time
from evaluation.engine import heap, standby
if sys.argv[1] == "0":
    heap.freeze = lambda collect=True: None
standby.preload("helm")
started = time.perf_counter()
gc.collect()
print(time.perf_counter() - started)
"""


def best(fn, repeat: int):
    times, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    from helm.benchmark.adaptation.scenario_state import ScenarioState
    from helm.benchmark.metrics.metric import PerInstanceStats, compute_worst_case_metrics
    from helm.common.codec import from_json
    from helm.common.general import asdict_without_nones

    from evaluation.engine import helm_fast

    run = next(Path(args.path).rglob("per_instance_stats.json")).parent
    state = from_json((run / "scenario_state.json").read_text(), ScenarioState)
    per_instance = from_json((run / "per_instance_stats.json").read_text(), list[PerInstanceStats])
    by_id = {i.id: i for i in state.instances}
    stats = {by_id[p.instance_id]: p.stats for p in per_instance}
    rows = {"run": run.name, "instances": len(stats), "statistics": sum(len(v) for v in stats.values())}

    pairs = {
        "worst_case_metrics": (lambda: compute_worst_case_metrics(stats),
                               lambda: helm_fast.compute_worst_case_metrics(stats)),
        "asdict_without_nones": (lambda: [asdict_without_nones(state)] + [asdict_without_nones(x) for x in per_instance],
                                 lambda: [helm_fast.asdict_without_nones(state)]
                                 + [helm_fast.asdict_without_nones(x) for x in per_instance]),
    }  # fmt: skip
    plain = pairs["asdict_without_nones"][0]()
    pairs["json_dumps_indent_2"] = (
        lambda: [json.dumps(x, indent=2) for x in (plain[0], plain[1:])],
        lambda: [helm_fast.dumps_indent_2(x) for x in (plain[0], plain[1:])],
    )
    for name, (helm, fast) in pairs.items():
        t_helm, v_helm = best(helm, args.repeat)
        t_fast, v_fast = best(fast, args.repeat)
        rows[name] = {"helm_s": round(t_helm, 4), "helm_fast_s": round(t_fast, 4), "equal": v_helm == v_fast}

    env_path = str(REPO)
    for frozen in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", GC_CHILD, frozen], capture_output=True, text=True, cwd=REPO,
                             env={"PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
        rows[f"full_gc_s_{'frozen' if frozen == '1' else 'not_frozen'}"] = (
            round(float(out.stdout.strip().splitlines()[-1]), 4) if out.returncode == 0 else out.stderr[-500:]
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
