"""The one adapter between the Django side and the evaluation engine.

Everything the pipeline knows about `evaluation.engine` goes through here, so a change in the
engine's interface is fixed in this file only. The engine imports nothing from Django; this module
turns its result document into the plain shapes the services store.
"""

from __future__ import annotations

import logging
import signal
import tarfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)


class EngineUserError(Exception):
    """The submission's fault: fail at once and show `message` to the team."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail


class EngineInfraError(Exception):
    """Our fault: retry with backoff; never counts toward the team's quota."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail


class EvaluationStopped(BaseException):
    """The job was cancelled or taken over while it ran; nothing more may be stored.

    A BaseException, like KeyboardInterrupt, so that no broad `except Exception` in the engine or in
    HELM's callbacks swallows it; their `finally` blocks still stop the subprocesses.
    """


RECORD_KEY = ("run", "metric", "split", "sub_split", "perturbation", "computed_on")


@dataclass
class SuiteOutcome:
    suite: str
    records: list[dict]
    runs: list[dict]
    efficiency: dict
    hardware: dict = field(default_factory=dict)
    engine_version: str = ""
    helm_version: str = ""
    schema_version: str = ""
    document: dict = field(default_factory=dict)
    output_dir: Path | None = None


def evaluation_suites() -> list[tuple[str, str]]:
    """[(role, suite name)] from settings.EVALUATION_SUITES, open first, then hidden."""
    roles = ["open", "hidden"]
    result: list[tuple[str, str]] = []
    for position, item in enumerate(settings.EVALUATION_SUITES):
        role, sep, name = item.partition("=")
        if not sep:
            role, name = (roles[position] if position < len(roles) else f"extra{position}"), item
        result.append((role.strip(), name.strip()))
    return result


def suite_time_limit_s(suite: str) -> int | None:
    """The suite's own time limit (the engine enforces it on helm-run)."""
    from evaluation.engine.suites import UnknownSuite, get_suite

    try:
        return int(get_suite(suite).time_limit_s)
    except UnknownSuite:
        return None


def _normalise_record(raw: dict) -> dict:
    """An engine Record with its key parts as strings: None (unperturbed, no split) is stored as ""."""
    record = {key: str(raw.get(key) or "") for key in RECORD_KEY}
    record["scenario"] = str(raw.get("scenario") or "")
    value = raw.get("value")
    record["value"] = float(value) if value is not None else None
    record["count"] = int(raw.get("count") or 0)
    return record


def outcome_from_document(document: dict, output_dir: Path | None = None) -> SuiteOutcome:
    """Flatten an engine result document into what the services store."""
    runs_raw = document.get("runs") or []
    records_raw = list(document.get("records") or [])
    runs = []
    for run in runs_raw:
        runs.append(dict(run))
        records_raw.extend(run.get("records") or [])
    # Collapse duplicates by natural key so the upsert never sees one key twice.
    records: dict[tuple, dict] = {}
    for raw in records_raw:
        record = _normalise_record(raw)
        if record["run"] and record["metric"]:
            records[tuple(record[k] for k in RECORD_KEY)] = record
    light = {k: v for k, v in document.items() if k not in ("records", "runs")}
    return SuiteOutcome(
        suite=str(
            document.get("suite", {}).get("name")
            if isinstance(document.get("suite"), dict)
            else document.get("suite", "")
        ),
        records=list(records.values()),
        runs=runs,
        efficiency=document.get("efficiency") or {},
        hardware=document.get("hardware") or {},
        engine_version=str(document.get("engine_version") or ""),
        helm_version=str(document.get("helm_version") or ""),
        schema_version=str(document.get("schema_version") or document.get("version") or ""),
        document=light,
        output_dir=output_dir,
    )


@contextmanager
def _interruptible(stop_signal: int):
    """Let another thread (the heartbeat) or a revoke (SIGTERM in a prefork child) stop the engine.

    The engine runs helm-run and the model server as subprocesses and stops them in its `finally`
    blocks, so raising in the main thread is a clean stop. Only possible in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stopped(signum, frame):
        # Once only: a second signal (revoke and heartbeat both fire) must not break the engine's cleanup.
        if _stopping.is_set():
            return
        _stopping.set()
        raise EvaluationStopped()

    signals = [stop_signal]
    try:
        from billiard.process import current_process

        if "PoolWorker" in current_process().name:  # prefork child: SIGTERM is a revoke
            signals.append(signal.SIGTERM)
    except ImportError:
        pass
    previous = {sig: signal.signal(sig, raise_stopped) for sig in signals}
    _stopping.clear()
    _engine_running.set()
    try:
        yield
    finally:
        _engine_running.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNAL = signal.SIGUSR1
_engine_running = threading.Event()
_stopping = threading.Event()


def interrupt_main_thread() -> None:
    """Called by the heartbeat thread when the job was cancelled or taken over.

    Only while the engine runs under `_interruptible`; otherwise the main thread notices on its own
    (every store checks that the job is still its own).
    """
    if _engine_running.is_set() and not _stopping.is_set():
        signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)


def engine_run_suite(
    *,
    model_dir: Path,
    suite: str,
    memory_gb: float,
    out_dir: Path,
    on_progress: Callable[[dict], None],
    base_model_dir: Path | None = None,
) -> SuiteOutcome:
    """Run one suite on one model through the engine; classify every failure once."""
    from evaluation.engine import errors as engine_errors
    from evaluation.engine import runner

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _interruptible(STOP_SIGNAL):
            document = runner.evaluate(
                model_dir=Path(model_dir),
                suite=suite,
                track_memory_gb=memory_gb,
                out_dir=out_dir,
                adapter_base=Path(base_model_dir) if base_model_dir else None,
                threads=settings.EVALUATION_HELM_THREADS,
                health_timeout_s=settings.EVALUATION_HEALTH_TIMEOUT_SECONDS,
                on_progress=on_progress,
                standby=settings.EVALUATION_STANDBY,
                helm_processes=settings.EVALUATION_HELM_PROCESSES,
            )
    except engine_errors.UserError as exc:
        raise EngineUserError(exc.message, exc.log_tail)
    except engine_errors.EngineError as exc:
        raise EngineInfraError(exc.message, exc.log_tail)
    except OSError as exc:  # disk full, a missing interpreter: ours, not the team's
        raise EngineInfraError(f"{type(exc).__name__}: {exc}")
    data = document.to_dict() if hasattr(document, "to_dict") else dict(document)
    return outcome_from_document(data, out_dir)


def engine_log_paths(out_dir: Path) -> list[Path]:
    """The files whose tail the live view shows, newest activity last."""
    return [out_dir / "server.log", out_dir / "helm.log"]


def archive_output(output_dir: Path, archive_path: Path) -> Path:
    """Pack HELM's raw output for organizers (tar.gz)."""
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "w:gz") as tar:
        tar.add(output_dir, arcname=output_dir.name)
    return archive_path
