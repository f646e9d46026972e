"""How long helm-run's metrics phase takes for one finished run, through HELM's own metrics.

    python -m benchmarks.helm_speed --size tiny --suites prefill-mc --modes ours \
        --instances prefill-mc=1000 --helm-processes 3 --out /tmp/hs_mc          # a finished run, on a CPU
    python -m benchmarks.helm_metrics_rate --run "/tmp/hs_mc/tiny-prefill-mc-ours-24/helm/runs/eval/RUN" \
        --prod-env /tmp/hs_mc/tiny-prefill-mc-ours-24/prod_env [--freeze]

One process with helm_fast installed: the run's `run_spec.json` and `scenario_state.json` loaded into a
real `Runner`, then, three times, what `Runner.run_one` does after execution: each metric's `evaluate`
and the five JSON files written (to a temporary folder). `--freeze`: the loaded state frozen out of the
garbage collector's collections first, as helm_fast does once a run's requests are answered
(`_freezing_after`). Prints one JSON line a pass: seconds per part, the collector's seconds and
collections. The first pass also imports the metrics' modules.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks import helm_setup

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(run: str, prod_env: str, threads: int):
    """(run spec, scenario, scenario state, runner) as helm-run has them when its requests are answered."""
    from helm.benchmark import runner as helm_runner
    from helm.benchmark.adaptation.scenario_state import ScenarioState
    from helm.benchmark.run_spec import RunSpec
    from helm.benchmark.scenarios.scenario import create_scenario
    from helm.common.codec import from_json

    helm_setup.register(prod_env)

    with open(os.path.join(run, "run_spec.json")) as f:
        spec = from_json(f.read(), RunSpec)
    with open(os.path.join(run, "scenario_state.json")) as f:
        state = from_json(f.read(), ScenarioState)
    execution = helm_setup.execution_spec(prod_env, threads)
    runner = helm_runner.Runner(execution, output_path=tempfile.mkdtemp(prefix="helm-metrics-"), suite="eval",
                                skip_instances=False, cache_instances=False, cache_instances_only=False,
                                skip_completed_runs=False, exit_on_error=True)  # fmt: skip
    return spec, create_scenario(spec.scenario_spec), state, runner


def metrics_pass(spec, scenario, state, runner, threads: int) -> dict:
    """`Runner.run_one`'s steps after execution; seconds per part."""
    from helm.benchmark import runner as helm_runner
    from helm.benchmark.metrics.metric import create_metric
    from helm.common.general import write

    times: dict = {}
    with helm_setup.collections_timed() as collections:
        started = time.perf_counter()
        stats, per_instance = [], []
        for metric in [create_metric(m) for m in spec.metric_specs]:
            began = time.perf_counter()
            result = metric.evaluate(state, runner.metric_service, runner.eval_cache_path, threads)
            times[type(metric).__name__] = round(time.perf_counter() - began, 3)
            stats += result.aggregated_stats
            per_instance += result.per_instance_stats
        began, out = time.perf_counter(), os.path.join(runner.output_path, "run")
        os.makedirs(out, exist_ok=True)
        dumps, plain = helm_runner.json.dumps, helm_runner.asdict_without_nones
        write(os.path.join(out, "run_spec.json"), dumps(plain(spec), indent=2))
        write(os.path.join(out, "scenario.json"), dumps(plain(scenario), indent=2))
        write(os.path.join(out, "scenario_state.json"), dumps(plain(state), indent=2))
        write(
            os.path.join(out, "stats.json"), dumps([plain(s) for s in helm_runner.remove_stats_nans(stats)], indent=2)
        )
        kept = helm_runner.remove_per_instance_stats_nans(per_instance)
        write(os.path.join(out, "per_instance_stats.json"), dumps(list(map(plain, kept)), indent=2))
        times["write_files"] = round(time.perf_counter() - began, 3)
        times["total"] = round(time.perf_counter() - started, 3)
    times["gc_s"], times["gc_collections"] = round(collections["seconds"], 3), collections["count"]
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished run's folder (run_spec.json, scenario_state.json)")
    p.add_argument("--prod-env", required=True, help="the evaluation's prod_env folder")
    p.add_argument("--threads", type=int, default=43, help="HELM's parallelism (a helm-run's share of 128)")
    p.add_argument("--freeze", action="store_true", help="the loaded state frozen out of collections first")
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args(argv)

    from evaluation.engine import heap, helm_fast

    helm_fast.install()
    spec, scenario, state, runner = load(args.run, args.prod_env, args.threads)
    if args.freeze:
        heap.freeze(collect=False)
    for _ in range(args.passes):
        print(json.dumps({"freeze": args.freeze, **metrics_pass(spec, scenario, state, runner, args.threads)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
