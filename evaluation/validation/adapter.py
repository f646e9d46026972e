"""LoRA adapters: the base is on the allow-list, and every tensor fits that base's shapes."""

from __future__ import annotations

from pathlib import Path

from evaluation.validation.errors import ValidationFailed, ValidatorUnavailable
from evaluation.validation.rules import BaseInfo, Rules
from evaluation.validation.safetensors_header import TensorInfo
from evaluation.validation.weights import expected_shapes

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def find_base(adapter_config: dict, rules: Rules) -> BaseInfo:
    reference = adapter_config.get("base_model_name_or_path")
    if not isinstance(reference, str) or not reference.strip():
        raise ValidationFailed(
            ADAPTER_CONFIG,
            "does not name its base model (base_model_name_or_path).",
            "Set base_model_name_or_path to the allow-list name of the base you trained on.",
        )
    base = next((b for b in rules.bases if b.matches(reference)), None)
    if base is None:
        allowed = ", ".join(sorted(b.name for b in rules.bases)) or "none"
        raise ValidationFailed(
            ADAPTER_CONFIG,
            f"names base model {reference!r}, which is not on the organizers' allow-list.",
            f"Train on an allowed base ({allowed}) and set base_model_name_or_path to its name.",
        )
    if base.name != rules.declared_base:
        raise ValidationFailed(
            ADAPTER_CONFIG,
            f"was trained on {base.name}, but the submission declares {rules.declared_base} as its base.",
            f"Submit again declaring {base.name} as the base model.",
        )
    return base


def check_adapter_config(adapter_config: dict) -> tuple[int, dict]:
    if str(adapter_config.get("peft_type", "")).upper() != "LORA":
        raise ValidationFailed(
            ADAPTER_CONFIG,
            f"has peft_type {adapter_config.get('peft_type')!r}; only LoRA adapters are accepted.",
            "Train a LoRA adapter with PEFT, or merge it and submit full weights.",
        )
    task = adapter_config.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise ValidationFailed(
            ADAPTER_CONFIG,
            f"has task_type {task!r}; only CAUSAL_LM adapters are accepted.",
            "Create the adapter with task_type=CAUSAL_LM.",
        )
    r = adapter_config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValidationFailed(ADAPTER_CONFIG, f"has an invalid rank r={r!r}.", "Save the adapter again with PEFT.")
    rank_pattern = adapter_config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        raise ValidationFailed(
            ADAPTER_CONFIG, "has a rank_pattern that is not a map.", "Save the adapter again with PEFT."
        )
    return r, rank_pattern


def base_shapes(base: BaseInfo) -> dict[str, tuple[int, ...]]:
    folder = Path(base.weights_path) if base.weights_path else None
    if folder is None or not (folder / "config.json").is_file():
        raise ValidatorUnavailable(
            f"The files of base model {base.name} are not available to the validator ({base.weights_path or 'no path set'})."
        )
    _config, shapes, _tied = expected_shapes(folder, shown=f"{base.name} config.json")
    return shapes


def check_adapter_shapes(
    tensors: dict[str, TensorInfo], shapes: dict[str, tuple[int, ...]], r: int, rank_pattern: dict, base: BaseInfo
) -> None:
    ranks: dict[str, int] = {}
    fix = f"Train the adapter on {base.name} itself, unchanged, and save it with PEFT."
    for name, info in tensors.items():
        if not name.startswith(PREFIX):
            raise ValidationFailed(
                name,
                "is not a PEFT adapter tensor (names start with base_model.model.).",
                "Save the adapter with PEFT's save_pretrained.",
            )
        inner = name[len(PREFIX) :]
        for marker, kind in (  # noqa: B007 (kind is used after the break)
            (".lora_A.", "A"),
            (".lora_B.", "B"),
            (".lora_embedding_A", "eA"),
            (".lora_embedding_B", "eB"),
        ):
            if marker in inner:
                module = inner.split(marker)[0]
                break
        else:
            # modules_to_save: a full copy of a base tensor.
            if inner not in shapes:
                raise ValidationFailed(name, f"has no counterpart in {base.name}.", fix)
            if info.shape != shapes[inner]:
                raise ValidationFailed(
                    name, f"has shape {list(info.shape)} but {base.name} has {list(shapes[inner])}.", fix
                )
            continue
        target = module + ".weight"
        if target not in shapes:
            raise ValidationFailed(name, f"adapts module {module!r}, which {base.name} does not have.", fix)
        base_shape = shapes[target]
        if len(base_shape) != 2 or len(info.shape) != 2:
            raise ValidationFailed(name, f"adapts {module!r} whose weights are not a matrix.", fix)
        out_f, in_f = base_shape
        if kind == "A":
            rank, ok = info.shape[0], info.shape[1] == in_f
            expect = f"[r, {in_f}]"
        elif kind == "B":
            rank, ok = info.shape[1], info.shape[0] == out_f
            expect = f"[{out_f}, r]"
        elif kind == "eA":  # embeddings are stored [num_embeddings, dim]
            rank, ok = info.shape[0], info.shape[1] == out_f
            expect = f"[r, {out_f}]"
        else:
            rank, ok = info.shape[1], info.shape[0] == in_f
            expect = f"[{in_f}, r]"
        if not ok:
            raise ValidationFailed(name, f"has shape {list(info.shape)}; on {base.name} it must be {expect}.", fix)
        if ranks.setdefault(module, rank) != rank:
            raise ValidationFailed(name, f"has rank {rank}, but its pair has rank {ranks[module]}.", fix)
        wanted = next((v for k, v in rank_pattern.items() if module.endswith(k)), r)
        if rank != wanted:
            raise ValidationFailed(
                name,
                f"has rank {rank} but adapter_config.json says r={wanted}.",
                "Save the adapter again with PEFT so its config matches its weights.",
            )
    if not ranks:
        raise ValidationFailed(
            ADAPTER_WEIGHTS, "holds no LoRA tensors.", "Save the trained adapter with PEFT's save_pretrained."
        )
