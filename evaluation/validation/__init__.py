"""Validation of an uploaded model, with no Django: archive in, validated model folder or one message out.

Nothing here unpickles, imports from the upload, or trusts remote code: config and
tokenizer are read as data, weights only through their safetensors headers, and the expected
shapes come from transformers' own classes built on the meta device.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.validation import adapter as adapter_checks
from evaluation.validation.archive import safe_extract
from evaluation.validation.errors import ValidationFailed, ValidatorUnavailable
from evaluation.validation.files import check_inventory, find_model_root, remove_junk
from evaluation.validation.jsonfiles import read_json, reject_custom_code
from evaluation.validation.rules import BaseInfo, Rules, ValidatedModel
from evaluation.validation.safetensors_header import read_header
from evaluation.validation.tokenizer import check_tokenizer, has_tokenizer
from evaluation.validation.weights import (
    check_full_shapes,
    check_memory,
    expected_shapes,
    read_weights,
)

__all__ = [
    "BaseInfo",
    "Rules",
    "ValidatedModel",
    "ValidationFailed",
    "ValidatorUnavailable",
    "validate_archive",
    "validate_folder",
]


def validate_archive(archive: Path, dest: Path, rules: Rules) -> ValidatedModel:
    """Extract `archive` into the empty folder `dest` (nothing is written elsewhere) and validate it."""
    safe_extract(Path(archive), Path(dest), rules)
    return validate_folder(Path(dest), rules)


def validate_folder(folder: Path, rules: Rules) -> ValidatedModel:
    remove_junk(folder)
    root = find_model_root(folder)
    names = check_inventory(root)
    reject_custom_code(root, max_bytes=rules.max_json_bytes)
    if (root / adapter_checks.ADAPTER_CONFIG).is_file():
        return _validate_adapter(root, names, rules)
    return _validate_full(root, names, rules)


def _validate_full(root: Path, names: list[str], rules: Rules) -> ValidatedModel:
    config = read_json(root, "config.json", max_bytes=rules.max_json_bytes)
    archs = config.get("architectures")
    if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise ValidationFailed(
            "config.json",
            "must list exactly one architecture in `architectures`.",
            'Write e.g. "architectures": ["LlamaForCausalLM"], as save_pretrained does.',
        )
    arch = archs[0]
    allowed = rules.allowed_architectures
    if arch not in allowed:
        raise ValidationFailed(
            "config.json",
            f"names architecture {arch!r}, which is not on the allow-list.",
            f"Fine-tune an allowed base model (architectures: {', '.join(sorted(allowed)) or 'none'}).",
        )
    declared = rules.base(rules.declared_base)
    if declared is not None and declared.architecture != arch:
        raise ValidationFailed(
            "config.json",
            f"names architecture {arch!r}, but the declared base {declared.name} is a {declared.architecture}.",
            "Declare the base model you really fine-tuned.",
        )
    model_config, shapes, tied = expected_shapes(root)
    if arch not in _classes_for(model_config):
        raise ValidationFailed(
            "config.json",
            f"names {arch!r} but its model_type {getattr(model_config, 'model_type', '?')!r} builds a different model.",
            "Use the config.json that save_pretrained wrote.",
        )
    tensors = read_weights(root, rules, names)
    check_full_shapes(tensors, shapes, tied, arch)
    vocab_size = getattr(model_config, "vocab_size", None)
    check_tokenizer(root, vocab_size=vocab_size)
    parameters = sum(t.numel for t in tensors.values())
    estimate = check_memory(parameters, rules, "config.json")
    return ValidatedModel(root, "full", arch, parameters, round(estimate, 2), rules.declared_base, tuple(names))


def _classes_for(model_config) -> set[str]:
    from transformers import AutoModelForCausalLM

    mapping = AutoModelForCausalLM._model_mapping
    try:
        cls = mapping[type(model_config)]
    except KeyError:
        return set()
    return {cls.__name__}


def _validate_adapter(root: Path, names: list[str], rules: Rules) -> ValidatedModel:
    cfg = read_json(root, adapter_checks.ADAPTER_CONFIG, max_bytes=rules.max_json_bytes)
    r, rank_pattern = adapter_checks.check_adapter_config(cfg)
    base = adapter_checks.find_base(cfg, rules)
    if base.architecture not in rules.allowed_architectures:
        raise ValidationFailed(
            adapter_checks.ADAPTER_CONFIG,
            f"targets {base.name}, whose architecture is not allowed.",
            "Choose an allowed base.",
        )
    if not (root / adapter_checks.ADAPTER_WEIGHTS).is_file():
        raise ValidationFailed(
            adapter_checks.ADAPTER_WEIGHTS,
            "is missing.",
            "Save the adapter with `model.save_pretrained(out)` (PEFT writes safetensors by default).",
        )
    tensors = read_header(root / adapter_checks.ADAPTER_WEIGHTS, max_header_bytes=rules.max_header_bytes)
    from evaluation.validation.safetensors_header import WEIGHT_DTYPES

    bad = next((t for t in tensors.values() if t.dtype not in WEIGHT_DTYPES), None)
    if bad is not None:
        raise ValidationFailed(
            adapter_checks.ADAPTER_WEIGHTS,
            f"stores {bad.name!r} as {bad.dtype}; weights must be float32, float16 or bfloat16.",
            "Save the adapter in a float dtype.",
        )
    shapes = adapter_checks.base_shapes(base)
    adapter_checks.check_adapter_shapes(tensors, shapes, r, rank_pattern, base)
    if has_tokenizer(root):
        check_tokenizer(root, vocab_size=None)
    parameters = base.parameter_count + sum(t.numel for t in tensors.values())
    estimate = check_memory(parameters, rules, adapter_checks.ADAPTER_CONFIG)
    return ValidatedModel(root, "adapter", base.architecture, parameters, round(estimate, 2), base.name, tuple(names))
