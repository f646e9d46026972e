"""The audit trail: one helper writes every record."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from portal.models import AuditEvent, Team


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    subject_user: AbstractBaseUser | None = None,
    team: Team | None = None,
    obj: models.Model | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record who did what to whom and why. Call it inside the service's transaction so both commit together."""
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        subject_user=subject_user,
        team=team,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        reason=reason,
        data=data or {},
    )
