"""Profiles and student status: the participant's side and the organizer's review."""

import secrets
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from portal.errors import PermissionDenied, ServiceError
from portal.models import Membership, Profile
from portal.services.audit import audit_record
from portal.services.evidence import evidence_check
from portal.services.standings import standings_refresh_eligibility

Status = Profile.StudentStatus


def profile_ensure(*, user: AbstractBaseUser) -> Profile:
    profile, _ = Profile.objects.get_or_create(user=user)
    return profile


def profile_update(
    *,
    user: AbstractBaseUser,
    display_name: str,
    affiliation: str,
    country: str,
    is_student: bool,
    evidence: UploadedFile | None = None,
) -> Profile:
    """Save the participant's details; a new evidence file (re)starts the organizers' review."""
    extension = evidence_check(evidence) if evidence is not None else None
    with transaction.atomic():
        profile_ensure(user=user)
        profile = Profile.objects.select_for_update().get(user=user)
        profile.display_name = display_name.strip()
        profile.affiliation = affiliation.strip()
        profile.country = country.strip().upper()
        old_file = profile.student_evidence.name if profile.student_evidence else ""
        was_verified = profile.student_status == Status.VERIFIED
        if not is_student:
            if profile.student_status != Status.NOT_STUDENT:
                audit_record(actor=user, action="student.withdrawn", subject_user=user, obj=profile)
            profile.student_status = Status.NOT_STUDENT
            profile.student_evidence = ""
            profile.student_evidence_uploaded_at = None
            profile.student_reviewed_at = None
            profile.student_reviewed_by = None
            profile.student_rejection_reason = ""
        elif evidence is not None:
            # A random name: the user's own file name never reaches the storage path.
            evidence.name = f"{user.pk}-{secrets.token_hex(8)}.{extension}"
            profile.student_evidence = evidence
            profile.student_evidence_uploaded_at = timezone.now()
            profile.student_status = Status.PENDING
            profile.student_reviewed_at = None
            profile.student_reviewed_by = None
            profile.student_rejection_reason = ""
            audit_record(
                actor=user,
                action="student.evidence_submitted",
                subject_user=user,
                obj=profile,
                data={"size": evidence.size},
            )
        elif profile.student_status == Status.NOT_STUDENT:
            raise ServiceError(
                "Attach evidence of your enrolment (PDF, PNG or JPEG) to declare yourself a student.",
                field="student_evidence",
                code="evidence_missing",
            )
        profile.save()
        if was_verified and profile.student_status != Status.VERIFIED:
            team_ids = Membership.objects.filter(user=user).values_list("team_id", flat=True)
            standings_refresh_eligibility(team_ids=list(team_ids), reason="student status withdrawn")
        if old_file and old_file != (profile.student_evidence.name or ""):
            storage = profile.student_evidence.storage
            transaction.on_commit(lambda: storage.delete(old_file))
    return profile


def _review(*, actor: AbstractBaseUser, profile_ids: Iterable[int], verify: bool, reason: str) -> list[Profile]:
    if not getattr(actor, "is_staff", False):
        raise PermissionDenied("Only organizers review student evidence.")
    reason = reason.strip()
    if not verify and not reason:
        raise ServiceError("Give the participant a reason for the rejection.", field="reason", code="reason_missing")
    reviewed = []
    changed: list[int] = []  # users whose "verified student" changed: their teams' eligibility may have
    now = timezone.now()
    with transaction.atomic():
        profiles = list(Profile.objects.select_for_update().filter(pk__in=list(profile_ids)).order_by("pk"))
        for profile in profiles:
            if not profile.student_evidence:
                raise ServiceError(f"{profile.name} has uploaded no evidence to review.", code="no_evidence")
            previous = profile.student_status
            profile.student_status = Status.VERIFIED if verify else Status.REJECTED
            profile.student_rejection_reason = "" if verify else reason
            profile.student_reviewed_by = actor
            profile.student_reviewed_at = now
            profile.save(
                update_fields=[
                    "student_status",
                    "student_rejection_reason",
                    "student_reviewed_by",
                    "student_reviewed_at",
                ]
            )
            audit_record(
                actor=actor,
                action="student.verified" if verify else "student.rejected",
                subject_user=profile.user,
                obj=profile,
                reason=reason,
                data={"from": previous, "to": profile.student_status},
            )
            reviewed.append(profile)
            if (previous == Status.VERIFIED) != (profile.student_status == Status.VERIFIED):
                changed.append(profile.user_id)
        if changed:
            team_ids = Membership.objects.filter(user_id__in=changed).values_list("team_id", flat=True)
            standings_refresh_eligibility(
                team_ids=list(team_ids), reason=f"student status {'verified' if verify else 'rejected'}"
            )
    return reviewed


def student_verify(*, actor: AbstractBaseUser, profile_ids: Iterable[int], reason: str = "") -> list[Profile]:
    return _review(actor=actor, profile_ids=profile_ids, verify=True, reason=reason)


def student_reject(*, actor: AbstractBaseUser, profile_ids: Iterable[int], reason: str) -> list[Profile]:
    return _review(actor=actor, profile_ids=profile_ids, verify=False, reason=reason)
