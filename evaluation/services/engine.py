"""The one adapter between the Django side and the evaluation engine.

Everything the pipeline knows about `evaluation.engine` goes through here, so a change in the
engine's interface is fixed in this file only. The engine imports nothing from Django; this module
turns its result document into the plain shapes the services store.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
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


class EvaluationStopped(Exception):
    """The job was cancelled or taken over while it ran; nothing more may be stored."""


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
    """The suite's own time limit, if the engine declares one."""
    try:
        from evaluation.engine import suites as engine_suites
    except ImportError:
        return None
    for getter in ("get_suite", "suite_by_name"):
        fn = getattr(engine_suites, getter, None)
        if fn is None:
            continue
        try:
            suite_obj = fn(suite)
        except Exception:
            return None
        for attr in ("time_limit_s", "time_limit_seconds", "timeout_s"):
            value = getattr(suite_obj, attr, None)
            if value:
                return int(value)
    return None


def _normalise_record(raw: dict) -> dict:
    record = {key: (raw.get(key) or "") for key in RECORD_KEY}
    record["run"] = str(raw.get("run") or raw.get("run_name") or "")
    record["metric"] = str(raw.get("metric") or raw.get("name") or "")
    if raw.get("perturbation") and isinstance(raw["perturbation"], dict):
        record["perturbation"] = raw["perturbation"].get("name", "")
    record["scenario"] = str(raw.get("scenario") or "")
    value = raw.get("value", raw.get("mean"))
    record["value"] = float(value) if value is not None else None
    record["count"] = int(raw.get("count") or 0)
    return record


def outcome_from_document(document: dict, output_dir: Path | None = None) -> SuiteOutcome:
    """Flatten an engine result document into what the services store."""
    runs_raw = document.get("runs") or []
    records_raw = list(document.get("records") or [])
    runs = []
    for run in runs_raw:
        runs.append(
            {
                "name": run.get("name") or run.get("run") or "",
                "scenario": run.get("scenario", ""),
                "status": run.get("status", "ok"),
                "error": run.get("error", ""),
            }
        )
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


def engine_run_suite(
    *,
    model_dir: Path,
    suite: str,
    memory_gb: float,
    out_dir: Path,
    on_progress: Callable[[dict], None],
    should_stop: Callable[[], bool],
    base_model_dir: Path | None = None,
) -> SuiteOutcome:
    """Run one suite on one model through the engine; classify every failure once."""
    from evaluation.engine import errors as engine_errors
    from evaluation.engine import runner

    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {
        "model_dir": Path(model_dir),
        "suite": suite,
        "track_memory_gb": memory_gb,
        "out_dir": out_dir,
        "on_progress": on_progress,
    }
    if base_model_dir:
        kwargs["base_model_dir"] = Path(base_model_dir)
    try:
        document = runner.evaluate(**kwargs, should_stop=should_stop)
    except TypeError as exc:
        if "should_stop" not in str(exc):
            raise EngineInfraError(f"The evaluation engine could not be called: {exc}")
        document = runner.evaluate(**kwargs)
    except EvaluationStopped:
        raise
    except engine_errors.UserError as exc:
        raise EngineUserError(exc.message, getattr(exc, "log_tail", ""))
    except engine_errors.EngineError as exc:
        raise EngineInfraError(exc.message, getattr(exc, "log_tail", ""))
    if should_stop():
        raise EvaluationStopped()
    return outcome_from_document(document, out_dir)


def archive_output(output_dir: Path, archive_path: Path) -> Path:
    """Pack HELM's raw output for organizers (tar.gz)."""
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "w:gz") as tar:
        tar.add(output_dir, arcname=output_dir.name)
    return archive_path
