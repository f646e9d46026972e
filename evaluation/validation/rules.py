"""The limits and allow-list that one validation runs against, as plain data (no Django)."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BaseInfo:
    """A base model on the allow-list."""

    name: str
    architecture: str
    parameter_count: int
    weights_path: str = ""
    aliases: tuple[str, ...] = ()

    def matches(self, reference: str) -> bool:
        """Whether an adapter's `base_model_name_or_path` names this base (hub id, local path or our name)."""
        wanted = _normalise(reference)
        names = {self.name, *self.aliases}
        if self.weights_path:
            names.add(Path(self.weights_path).name)
        return wanted in {_normalise(n) for n in names if n}


def _normalise(name: str) -> str:
    return name.strip().rstrip("/").rsplit("/", 1)[-1].lower()


@dataclass(frozen=True)
class Rules:
    bases: tuple[BaseInfo, ...]
    declared_base: str
    memory_budget_gb: float
    max_files: int = 1000
    max_total_bytes: int = 200 * 1024**3
    max_ratio: float = 100.0
    # Compression-ratio checks apply only past this size: small files (configs, zero-initialised
    # LoRA B matrices) compress enormously without being bombs.
    ratio_min_bytes: int = 8 * 1024**2
    max_header_bytes: int = 16 * 1024**2
    max_json_bytes: int = 16 * 1024**2
    memory_overhead_gb: float = 1.0
    memory_factor: float = 1.2
    extra: dict = field(default_factory=dict)

    @property
    def allowed_architectures(self) -> set[str]:
        return {b.architecture for b in self.bases}

    def base(self, name: str) -> BaseInfo | None:
        return next((b for b in self.bases if b.name == name), None)


@dataclass(frozen=True)
class ValidatedModel:
    path: Path
    kind: str  # "full" or "adapter"
    architecture: str
    parameter_count: int
    estimated_memory_gb: float
    base_name: str
    files: tuple[str, ...] = ()
