"""The result document: one JSON per evaluation job, the contract the Django side stores.

Versioned by `schema_version` (major.minor). A reader accepts any document of its major version
(minor versions only add optional fields) and refuses another major with `ResultVersionError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = "1.0"
ENGINE_VERSION = "0.1.0"

RUN_STATUSES = ("succeeded", "failed", "skipped")


class ResultVersionError(ValueError):
    """The document was written by an incompatible engine."""


@dataclass
class Record:
    """One HELM statistic of one run, flattened.

    `perturbation` is None for unperturbed instances, else HELM's perturbation name (`robustness`,
    `fairness`, `mild_mix`, `gender`, …); `computed_on` is HELM's `original`/`perturbed`/`worst`.
    `value` is HELM's mean, None when HELM had nothing to average (count 0, e.g. a bias metric on text
    with no demographic words).
    """

    run: str
    scenario: str
    metric: str
    split: str | None
    sub_split: str | None
    perturbation: str | None
    computed_on: str | None
    value: float | None
    count: int


@dataclass
class RunResult:
    name: str
    scenario: str
    main_metric: str
    status: str  # one of RUN_STATUSES
    error: str | None = None
    wall_seconds: float | None = None
    instances: int | None = None  # evaluated instances (unperturbed, test split)
    ranked: bool = True


@dataclass
class Efficiency:
    """Measured by the engine (wall clocks around HELM, counters of our own server); never declared."""

    wall_seconds: float = 0.0  # the whole evaluation, server start to HELM's exit
    helm_seconds: float = 0.0  # helm-run alone
    gpu_seconds: float = 0.0  # devices held x wall seconds (see docs/evaluate-locally.md)
    device: str = "cpu"
    output_tokens: int = 0
    prompt_tokens: int = 0
    output_tokens_per_second: float = 0.0
    request_count: int = 0
    latency_mean_s: float | None = None
    latency_p95_s: float | None = None
    busy_seconds: float | None = None
    peak_gpu_memory_bytes: int | None = None
    parameter_count: int | None = None


@dataclass
class Hardware:
    gpu_name: str | None = None
    gpu_count: int = 0
    gpu_memory_bytes: int | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    torch_version: str | None = None
    cuda_version: str | None = None
    python_version: str | None = None
    platform: str | None = None


@dataclass
class ResultDocument:
    suite: str
    track_memory_gb: float
    engine_version: str = ENGINE_VERSION
    helm_version: str = ""
    schema_version: str = SCHEMA_VERSION
    status: str = "succeeded"  # "succeeded" (every run), "partial" (some runs failed), "failed"
    started_at: str = ""
    finished_at: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    hardware: Hardware = field(default_factory=Hardware)
    runs: list[RunResult] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    efficiency: Efficiency = field(default_factory=Efficiency)
    errors: list[dict[str, Any]] = field(default_factory=list)  # EngineError.to_dict() and run errors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultDocument:
        check_version(data.get("schema_version"))
        validate(data)
        kwargs = {k: v for k, v in data.items() if k in _field_names(cls)}
        kwargs["hardware"] = _build(Hardware, data.get("hardware") or {})
        kwargs["efficiency"] = _build(Efficiency, data.get("efficiency") or {})
        kwargs["runs"] = [_build(RunResult, r) for r in data.get("runs", [])]
        kwargs["records"] = [_build(Record, r) for r in data.get("records", [])]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ResultDocument:
        return cls.from_dict(json.loads(text))

    def records_for(self, *, aspect: str) -> list[Record]:
        """Records of one aspect, as the 2023 leaderboard grouped them (efficiency lives in `efficiency`)."""
        return [r for r in self.records if record_aspect(r) == aspect]


def record_aspect(record: Record) -> str | None:
    """accuracy: unperturbed; robustness/fairness: HELM's worst case; bias: HELM's bias metrics."""
    if record.metric.startswith("bias_metric:"):
        return "bias" if record.perturbation is None else None
    if record.perturbation is None:
        return "accuracy"
    if record.computed_on == "worst" and record.perturbation in ("robustness", "fairness"):
        return record.perturbation
    return None


def _field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _build(cls, data: dict[str, Any]):
    # Unknown keys come from a newer minor version: ignore them.
    return cls(**{k: v for k, v in data.items() if k in _field_names(cls)})


def check_version(version: Any) -> None:
    if not isinstance(version, str) or "." not in version:
        raise ResultVersionError(f"result document has no valid schema_version: {version!r}")
    major = version.split(".", 1)[0]
    if major != SCHEMA_VERSION.split(".", 1)[0]:
        raise ResultVersionError(f"result document version {version} is not readable by schema {SCHEMA_VERSION}")


_NUMBER = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Evaluation result document",
    "type": "object",
    "required": ["schema_version", "engine_version", "helm_version", "suite", "track_memory_gb", "status"],
    "properties": {
        "schema_version": {"type": "string", "pattern": r"^\d+\.\d+$"},
        "engine_version": {"type": "string"},
        "helm_version": {"type": "string"},
        "suite": {"type": "string"},
        "track_memory_gb": {"type": "number"},
        "status": {"enum": ["succeeded", "partial", "failed"]},
        "started_at": {"type": "string"},
        "finished_at": {"type": "string"},
        "model": {"type": "object"},
        "hardware": {"type": "object"},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "scenario", "main_metric", "status"],
                "properties": {
                    "name": {"type": "string"},
                    "scenario": {"type": "string"},
                    "main_metric": {"type": "string"},
                    "status": {"enum": list(RUN_STATUSES)},
                    "error": _STR,
                    "wall_seconds": _NUMBER,
                    "instances": {"type": ["integer", "null"]},
                    "ranked": {"type": "boolean"},
                },
            },
        },
        "records": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["run", "scenario", "metric", "value", "count"],
                "properties": {
                    "run": {"type": "string"},
                    "scenario": {"type": "string"},
                    "metric": {"type": "string"},
                    "split": _STR,
                    "sub_split": _STR,
                    "perturbation": _STR,
                    "computed_on": _STR,
                    "value": _NUMBER,
                    "count": {"type": "integer"},
                },
            },
        },
        "efficiency": {"type": "object"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}

_JSON_TYPES = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """The subset of JSON Schema used above: type, enum, required, properties, items, pattern."""
    import re

    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{where}: {value!r} is not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, _JSON_TYPES[t]) and not (t in ("number", "integer") and isinstance(value, bool))
            for t in types
        )
        if not ok:
            raise ValueError(f"{where}: expected {'/'.join(types)}, got {type(value).__name__}")
    if "pattern" in schema and isinstance(value, str) and not re.match(schema["pattern"], value):
        raise ValueError(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"{where}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")


def validate(data: dict[str, Any]) -> None:
    """Raise ValueError when `data` does not follow JSON_SCHEMA."""
    _check(data, JSON_SCHEMA, "$")
