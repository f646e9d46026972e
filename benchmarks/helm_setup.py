"""What the CPU benchmarks of HELM's phases (helm_adapt_rate, helm_execute_rate, helm_metrics_rate) set up
as a helm-run of the engine's does: HELM's configs with the runner's prod_env and the plugin, the
execution spec `--disable-cache` gives, and the garbage collector's time while a phase runs."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path


@functools.cache
def builtin_configs() -> None:
    """HELM's own configs, registered once a process as helm-run does (seconds; the tests build many specs)."""
    from helm.benchmark import config_registry

    config_registry.register_builtin_configs_from_helm_package()


def register(prod_env: Path | str) -> None:
    """HELM's configs, then the prod_env's (the runner's `write_prod_env`), then the plugin (`--plugins`)."""
    from helm.benchmark import config_registry

    builtin_configs()
    config_registry.register_configs_from_directory(str(prod_env))
    import evaluation.engine.helm_plugin  # noqa: F401


def execution_spec(prod_env: Path | str, threads: int):
    """The `ExecutionSpec` helm-run makes with `--local-path prod_env -n threads --disable-cache`."""
    from helm.benchmark.executor import ExecutionSpec
    from helm.common.authentication import Authentication

    return ExecutionSpec(auth=Authentication(""), url=None, local_path=str(prod_env), parallelism=threads,
                         dry_run=False, sqlite_cache_backend_config=None, mongo_cache_backend_config=None)  # fmt: skip


@contextlib.contextmanager
def collections_timed():
    """Seconds the garbage collector's collections took, and how many (by generation) ran."""
    import gc

    totals = {"seconds": 0.0, "count": [0, 0, 0]}
    began = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            totals["seconds"] += time.perf_counter() - began[0]
            totals["count"][info["generation"]] += 1

    gc.callbacks.append(callback)
    try:
        yield totals
    finally:
        gc.callbacks.remove(callback)
