"""A process that has already imported what an evaluation process needs, waiting to become one.

On a GPU box importing torch takes 4-6 s and transformers' Auto classes another 8-10 s (measured
on the H200 box, docs/benchmarks.md): paid by every evaluation's model server, and by helm-run for
its tokenizer. A GPU worker runs evaluations back to back, so the runner keeps one standby of each
kind started between evaluations; an evaluation takes one over by writing one JSON line to its
stdin: {"module", "argv", "env", "cwd", "log"}; the standby then runs `python -m module argv...`
in its own process. It touches no GPU before that, so it holds no GPU memory while it waits. EOF
on stdin (the runner discarded it) ends it.

    python -m evaluation.engine.standby server|helm
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

PRELOAD = {
    "server": (
        "torch",
        "transformers",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "safetensors",
        "evaluation.engine.loading",
        "evaluation.engine.server.app",
        "evaluation.engine.server.split",
    ),
    "helm": (
        "helm.benchmark.run",
        "transformers.models.auto.tokenization_auto",
        "helm.tokenizers.huggingface_tokenizer",
        "helm.benchmark.metrics.basic_metrics",
        "evaluation.engine.helm_plugin",
        "evaluation.engine.helm_fast",
    ),
}


def preload(kind: str) -> None:
    for name in PRELOAD[kind]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that fails here fails again, with its message, in the real run
            pass
    if kind == "helm":
        _register_helm_configs()
        _install_helm_fast()
    if kind == "server":
        _warm_triton()
    from evaluation.engine import heap

    heap.freeze()  # what was imported stays; later collections need not walk it


def _warm_triton() -> None:
    """A server's first Triton kernel (in its warm-up) looked up the compiled kernel on disk under a
    hash of Triton's own files, computed once per process (0.41 s on the H100 box), and imported
    Triton's Gluon front end (0.12 s): docs/benchmarks.md, session 16. Neither touches the GPU."""
    try:
        from triton.runtime.cache import triton_key

        triton_key()
        importlib.import_module("triton.experimental.gluon")
    except Exception:  # noqa: BLE001 - another Triton: its first kernel does this itself
        pass


def _install_helm_fast() -> None:
    try:
        from evaluation.engine import helm_fast

        helm_fast.install()
    except Exception:  # noqa: BLE001 - the run installs it again, and reports what fails
        pass


def _register_helm_configs() -> None:
    """helm-run first parses HELM's own model, tokenizer and deployment configs (thousands of lines of
    YAML, about a second) into its registries. Parse them while waiting; helm-run's own call, which
    imports the function by name when it starts, then finds it done. The registries hold the same
    entries either way, and helm-run still adds the job's configs (`--local-path`) after them."""
    try:
        from helm.benchmark import config_registry

        config_registry.register_builtin_configs_from_helm_package()
    except Exception:  # noqa: BLE001 - helm-run parses them itself, and reports what fails
        return
    config_registry.register_builtin_configs_from_helm_package = lambda: None


def become(order: dict) -> None:
    """Turn this process into `python -m order["module"] *order["argv"]`, as the runner would start it."""
    os.environ.clear()
    os.environ.update(order["env"])
    os.chdir(order["cwd"])
    if order.get("log"):
        fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    sys.argv = [order["module"], *order["argv"]]
    runpy.run_module(order["module"], run_name="__main__", alter_sys=True)


def main() -> int:
    """`python -m evaluation.engine.standby [--ready-fd N] KIND`: N is a pipe whose closing says the
    imports are done."""
    args = sys.argv[1:]
    ready_fd = None
    if args[:1] == ["--ready-fd"]:
        ready_fd, args = int(args[1]), args[2:]
    kind = args[0]
    preload(kind)
    if ready_fd is not None:
        os.close(ready_fd)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    become(json.loads(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
