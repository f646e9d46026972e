"""How long helm-run's adaptation takes for one prefill-mc run entry, through HELM's own adapter.

    python -m benchmarks.helm_adapt_rate --instances 1000 [--task unit_conversion] [--threads 43] [--stock]

One process, as one helm-run: HELM's built-in configs plus a prod_env written by the runner
(`write_prod_env`: `challenge/submission`, its tokenizer a `HuggingFaceTokenizer` of the submission's
folder), the engine's HELM plugin, the run entry's `RunSpec` as helm-run builds it
(`run_entries_to_run_specs` with `--models-to-run challenge/submission`), the `Runner`'s tokenizer
service (`TokenizerService(Executor(...).context)`, `--disable-cache`). The tokenizer is the one the
speed benchmarks give their 1.1B model (benchmarks/engine_speed.py's `build_model`: a byte-level BPE of
2048 tokens trained on evaluation/engine/tiny.py's corpus, a 4096-token context), written here without
the weights. Then `Runner.run_one`'s steps up to adaptation (the scenario's instances, downsampled,
preprocessed) and, timed, what helm-run's log calls `Adapter.adapt`: `AdapterFactory.get_adapter(...)`
and `adapt(instances, parallelism)` (in-context examples, prompts, each prompt tokenized by the window
service; the tokenizer's first load included, as in a fresh helm-run). With helm_fast installed
(`install()` and `heap.freeze()`, as `python -m evaluation.engine.helm_fast` runs helm-run) or, with
`--stock`, without. Either way transformers is imported before the clock starts (install() imports it
before a run; stock helm-run would import it in its first run's adaptation, ~4 s on the dev box).

Prints one JSON line: seconds, CPU seconds, ms per instance, the shots per prompt, truncated prompts,
the garbage collector's seconds and collections while adapting, and a digest of the adapted request
states (every field, as `dataclasses.asdict` gives them) so that the two modes can be compared.
`--max-length N` lowers the deployment's context (to make prompts drop shots or be truncated);
`--profile PATH` writes a cProfile of the adaptation (its main thread only: pass `--threads 1`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import helm_setup

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASKS = ("unit_conversion", "date_reasoning", "factual_recall")


def build_tokenizer(folder: Path) -> dict:
    """The speed benchmarks' 1.1B tokenizer in `folder`; the model facts the runner reads from it."""
    from evaluation.engine import runner
    from evaluation.engine.tiny import DEFAULT_CORPUS, train_tokenizer

    train_tokenizer(folder, DEFAULT_CORPUS, vocab_size=2048, model_max_length=4096)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    return runner.model_facts(folder, None)


def entry_description(task: str, instances: int) -> str:
    """The prefill-mc entry of `task` as helm-run reads it from the runner's conf (`write_conf`)."""
    from evaluation.engine import runner
    from evaluation.engine.suites import get_suite

    (entry,) = [e for e in get_suite("prefill-mc").entries if e.description.startswith(f"offline:task={task},")]
    entry = dataclasses.replace(entry, instances=instances)  # the suite's 500, or as many as asked
    with tempfile.TemporaryDirectory() as tmp:
        conf = runner.write_conf(Path(tmp) / "conf.yaml", [entry], None).read_text()
    return json.loads(conf.split("description: ", 1)[1].split(", priority")[0])


def run_spec(prod_env: Path, facts: dict, description: str, instances: int):
    """The `RunSpec` helm-run builds for the run entry `description`, with the runner's prod_env and flags."""
    from helm.benchmark.presentation.run_entry import RunEntry
    from helm.benchmark.run import run_entries_to_run_specs

    from evaluation.engine import runner

    runner.write_prod_env(prod_env, "http://127.0.0.1:9", facts)  # nothing is sent: adaptation only
    helm_setup.register(prod_env)

    entries = [RunEntry(description=description, priority=1, groups=None)]
    (spec,) = run_entries_to_run_specs(entries, max_eval_instances=instances, models_to_run=[runner.DEPLOYMENT])
    return spec


def instances_for(spec, parallelism: int) -> list:
    """`Runner.run_one` up to adaptation: the scenario's instances, downsampled, preprocessed."""
    from helm.benchmark.data_preprocessor import DataPreprocessor
    from helm.benchmark.runner import downsample_eval_instances
    from helm.benchmark.scenarios.scenario import EVAL_SPLITS, create_scenario

    scenario = create_scenario(spec.scenario_spec)
    instances = scenario.get_instances("")
    eval_splits = spec.adapter_spec.eval_splits or EVAL_SPLITS
    instances = downsample_eval_instances(instances, spec.adapter_spec.max_eval_instances, eval_splits)
    return DataPreprocessor(spec.data_augmenter_spec).preprocess(instances, parallelism)


def tokenizer_service(prod_env: Path, parallelism: int):
    """The `Runner`'s: `TokenizerService(Executor(execution_spec).context)`, the cache off."""
    from helm.benchmark.executor import Executor
    from helm.benchmark.window_services.tokenizer_service import TokenizerService

    return TokenizerService(Executor(helm_setup.execution_spec(prod_env, parallelism)).context)


def digest(request_states: list) -> str:
    """Every field of every request state, in order."""
    text = json.dumps([dataclasses.asdict(state) for state in request_states], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adapt(spec, instances: list, service, parallelism: int) -> list:
    """What helm-run's log times as `Adapter.adapt`."""
    from helm.benchmark.adaptation.adapters.adapter_factory import AdapterFactory

    adapter = AdapterFactory.get_adapter(spec.adapter_spec, service)
    return adapter.adapt(instances, parallelism)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--task", choices=TASKS, default="unit_conversion")
    parser.add_argument("--threads", type=int, default=43, help="helm-run's -n (parallelism)")
    parser.add_argument("--max-length", type=int, default=None, help="the deployment's context length")
    parser.add_argument("--stock", action="store_true", help="stock HELM (helm_fast not installed)")
    parser.add_argument("--profile", default=None, help="write a cProfile of the adaptation here")
    args = parser.parse_args(argv)

    import helm.tokenizers.huggingface_tokenizer  # noqa: F401  (transformers: imported before a run, as install() does)

    from evaluation.engine import heap, helm_fast

    if not args.stock:
        helm_fast.install()  # as helm_fast.main() does before helm-run starts
        heap.freeze()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # HELM's log
        facts = build_tokenizer(Path(tmp) / "model")
        if args.max_length:
            facts["max_sequence_length"] = args.max_length
        description = entry_description(args.task, args.instances)
        spec = run_spec(Path(tmp) / "prod_env", facts, description, args.instances)
        instances = instances_for(spec, args.threads)
        service = tokenizer_service(Path(tmp) / "prod_env", args.threads)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started, cpu_started = time.perf_counter(), time.process_time()
        with helm_setup.collections_timed() as collections:
            states = adapt(spec, instances, service, args.threads)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
    n = len(states)
    print(json.dumps({
        "run": spec.name,
        "helm_fast": not args.stock,
        "threads": args.threads,
        "request_states": n,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "ms_per_instance": round(1000 * wall / max(n, 1), 3),
        "shots": dict(sorted(Counter(state.num_train_instances for state in states).items())),
        "truncated": sum(state.prompt_truncated for state in states),
        "gc_seconds": round(collections["seconds"], 3),
        "gc_collections": collections["count"],
        "digest": digest(states),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
