"""How fast helm-run's execute phase can send, with no model behind it: CPU per request, through HELM's
own executor.

    python -m benchmarks.helm_execute_rate --requests 2000 --threads 43 [--stock]

A stub server in another process (benchmarks/helm_client_rate.py's: HTTP/1.1, kept-alive connections,
a thread a connection) answers every POST at once with a one-token completion. One process, as one
helm-run, builds its executor the way helm-run does for the engine's deployment: HELM's built-in
configs plus a prod_env written by the runner (`write_prod_env`: `challenge/submission` served by
`HTTPModelClient`), `ExecutionSpec` as `--disable-cache` makes it, `Executor(...)`. Then it executes
`--requests` multiple-choice request states (a ~500-token five-shot prompt, `max_tokens=1`,
temperature 0, `top_k_per_token=5`, as HELM's joint multiple-choice adapter makes them) from
`--threads` threads: `Executor.execute` -> `LocalContext` -> `AutoClient` (its retry decorator) ->
`HTTPModelClient` -> `RequestResult` -> `replace(state, result=...)`. With helm_fast installed
(helm_fast.py's `install()`, as `python -m evaluation.engine.helm_fast` runs helm-run) or, with
`--stock`, without. Prints one JSON line: requests per second and the sender's CPU per request.

`--nagle` leaves Nagle's algorithm on in the stub, as the engine's server had it before session 18
(headers, then body): each request on a kept-alive connection then waited ~40 ms for the client's
delayed acknowledgement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import helm_client_rate, helm_setup

SHOT = (
    "Question: A car travels 150 kilometres in 2.5 hours at a constant speed. How far does it travel in "
    "4 hours at the same speed, and what is that speed in metres per second, rounded to one decimal place?\n"
    "A. 220 km, 16.7 m/s\nB. 240 km, 16.7 m/s\nC. 240 km, 18.3 m/s\nD. 260 km, 15.0 m/s\nAnswer: B\n\n"
)  # ~90 tokens; five of them and the question make a ~500-token prompt


class Stub(helm_client_rate.Stub):
    """helm_client_rate's stub with Nagle's algorithm off, as the engine's server (app.Handler)."""

    disable_nagle_algorithm = True


def executor(prod_env: Path, base_url: str, threads: int):
    """An `Executor` as helm-run builds it for the engine's deployment (runner.helm_command's flags)."""
    from helm.benchmark.executor import Executor

    from evaluation.engine import runner

    facts = {"max_sequence_length": 2048, "eos_token": "</s>", "bos_token": "<s>", "tokenizer_dir": None}
    runner.write_prod_env(prod_env, base_url, facts)
    helm_setup.register(prod_env)
    return Executor(helm_setup.execution_spec(prod_env, threads))


def request_states(n: int) -> list:
    """`n` request states shaped as HELM's joint multiple-choice adapter makes them."""
    from helm.benchmark.adaptation.request_state import RequestState
    from helm.benchmark.scenarios.scenario import Input, Instance, Output, Reference
    from helm.common.request import Request

    from evaluation.engine.runner import DEPLOYMENT

    states = []
    for i in range(n):
        question = f"Question: which of these is item {i}?"
        references = [Reference(Output(text=f"choice {c}"), tags=["correct"] if c == "B" else []) for c in "ABCD"]
        instance = Instance(Input(text=question), references=references, split="test", id=f"id{i}")
        prompt = SHOT * 5 + question + "\nA. choice A\nB. choice B\nC. choice C\nD. choice D\nAnswer:"
        request = Request(model=DEPLOYMENT, model_deployment=DEPLOYMENT, prompt=prompt, num_completions=1,
                          top_k_per_token=5, temperature=0.0, max_tokens=1, stop_sequences=[], random=None)  # fmt: skip
        states.append(RequestState(instance=instance, reference_index=None, request_mode=None, train_trial_index=0,
                                   output_mapping={c: f"choice {c}" for c in "ABCD"}, request=request, result=None,
                                   num_train_instances=5, prompt_truncated=False))  # fmt: skip
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=43)
    parser.add_argument("--stock", action="store_true", help="stock HELM (helm_fast not installed)")
    parser.add_argument(
        "--nagle", action="store_true", help="the stub answers as the engine's server did before session 18 (Nagle on)"
    )
    args = parser.parse_args(argv)

    from helm.benchmark.adaptation.adapter_spec import AdapterSpec
    from helm.benchmark.adaptation.scenario_state import ScenarioState

    from evaluation.engine import helm_fast

    if not args.stock:
        helm_fast.install()
    handler = helm_client_rate.Stub if args.nagle else Stub
    saved_url = os.environ.get("HELM_HTTP_MODEL_BASE_URL")
    try:
        with helm_client_rate.stub_server(handler) as base_url, tempfile.TemporaryDirectory() as tmp:
            os.environ["HELM_HTTP_MODEL_BASE_URL"] = base_url  # as runner.helm_env sets it
            with contextlib.redirect_stdout(sys.stderr):  # HELM prints where it reads configs from
                execute = executor(Path(tmp) / "prod_env", base_url, args.threads)
            states = request_states(args.requests)
            assert execute.process(states[0]).result.success  # the client made, a connection open
            scenario = ScenarioState(adapter_spec=AdapterSpec(method="multiple_choice_joint"), request_states=states)
            started, cpu_started = time.perf_counter(), time.process_time()
            done = execute.execute(scenario)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        if saved_url is None:
            os.environ.pop("HELM_HTTP_MODEL_BASE_URL", None)
        else:
            os.environ["HELM_HTTP_MODEL_BASE_URL"] = saved_url
    print(json.dumps({
        "requests": args.requests,
        "threads": args.threads,
        "helm_fast": not args.stock,
        "nagle": args.nagle,
        "succeeded": sum(state.result.success for state in done.request_states),
        **helm_client_rate.rates(args.requests, wall, cpu),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
