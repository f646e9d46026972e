"""Validating an uploaded submission: extract into its own folder, check, then QUEUED or FAILED."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.conf import settings

from evaluation import validation
from evaluation.models import BaseModel, Submission
from evaluation.services.transitions import submission_transition
from evaluation.upload_storage import chunk_store

logger = logging.getLogger(__name__)
S = Submission.Status


def submission_folder(submission_id: int) -> Path:
    """Everything the portal writes for one submission lives below this folder."""
    root = getattr(settings, "SUBMISSION_FILES_ROOT", None) or Path(settings.MEDIA_ROOT) / "submissions"
    return Path(root) / str(submission_id)


def validation_rules(submission: Submission) -> validation.Rules:
    bases = tuple(
        validation.BaseInfo(
            name=b.name,
            architecture=b.architecture,
            parameter_count=b.parameter_count,
            weights_path=b.weights_path,
            aliases=tuple(a for a in (b.display_name,) if a),
        )
        for b in BaseModel.objects.filter(is_active=True)
    )
    track = submission.track
    return validation.Rules(
        bases=bases,
        declared_base=submission.base_model.name,
        memory_budget_gb=float(track.gpu_memory_gb),
        max_files=getattr(settings, "SUBMISSION_MAX_FILES", 1000),
        # Safetensors barely compress: twice the upload limit is generous for honest archives.
        max_total_bytes=getattr(settings, "SUBMISSION_MAX_UNPACKED_BYTES", None) or 2 * track.max_upload_bytes,
        max_ratio=getattr(settings, "SUBMISSION_MAX_COMPRESSION_RATIO", 100.0),
    )


def submission_validate(*, submission_id: int) -> Submission:
    """Run the checks; idempotent (a repeated task finds the submission no longer validating and stops).

    A rule broken by the upload fails the submission as the participant's error; a problem of ours
    (ValidatorUnavailable, storage errors) propagates so the task retries it.
    """
    submission = Submission.objects.select_related("track", "base_model").get(pk=submission_id)
    if submission.status != S.VALIDATING:
        return submission
    folder = submission_folder(submission.pk)
    model_dir = folder / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a previous attempt that died half-way
    folder.mkdir(parents=True, exist_ok=True)
    rules = validation_rules(submission)
    try:
        with chunk_store().local_copy(submission.archive_path, folder / "download") as archive:
            result = validation.validate_archive(archive, model_dir, rules)
    except validation.ValidationFailed as failure:
        shutil.rmtree(model_dir, ignore_errors=True)
        logger.info("submission %s rejected: %s", submission_id, failure.message)
        return submission_transition(
            submission_id=submission_id, to=S.FAILED, reason=failure.message, failure_kind=Submission.FailureKind.USER
        )
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return submission_transition(
        submission_id=submission_id,
        to=S.QUEUED,
        reason=(
            f"Validated: {'LoRA adapter on ' + result.base_name if result.kind == 'adapter' else 'full weights'}, "
            f"{result.architecture}, {result.parameter_count:,} parameters, needs about {result.estimated_memory_gb:.1f} GB of GPU memory to serve in bf16."
        ),
        update={
            "kind": result.kind,
            "model_dir": str(result.path),
            "parameter_count": result.parameter_count,
            "estimated_memory_gb": result.estimated_memory_gb,
        },
    )
