import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.errors import PermissionDenied, ServiceError
from portal.models import AuditEvent, Profile
from portal.services import profile_update, student_reject, student_verify
from tests.portal.conftest import JPEG, PDF, PNG, make_user

pytestmark = pytest.mark.django_db
Status = Profile.StudentStatus


def _update(user, evidence=None, is_student=True, **kwargs):
    fields = {"display_name": "Ada", "affiliation": "Uni", "country": "ng", **kwargs}
    return profile_update(user=user, is_student=is_student, evidence=evidence, **fields)


def test_every_new_user_has_a_profile(user):
    assert Profile.objects.filter(user=user).exists()
    assert user.profile.student_status == Status.NOT_STUDENT


@pytest.mark.parametrize(("content", "ext"), [(PDF, "pdf"), (PNG, "png"), (JPEG, "jpg")])
def test_evidence_type_comes_from_its_content(user, content, ext):
    profile = _update(user, SimpleUploadedFile("whatever.txt", content))
    assert profile.student_status == Status.PENDING
    assert profile.student_evidence.name.endswith(f".{ext}")
    assert "whatever" not in profile.student_evidence.name
    assert profile.country == "NG"
    assert AuditEvent.objects.filter(action="student.evidence_submitted", subject_user=user).exists()


def test_a_renamed_executable_is_refused(user):
    with pytest.raises(ServiceError, match="PDF, PNG or JPEG") as err:
        _update(user, SimpleUploadedFile("card.pdf", b"MZ\x90\x00 not a pdf"))
    assert err.value.field == "student_evidence"
    user.profile.refresh_from_db()
    assert user.profile.student_status == Status.NOT_STUDENT and not user.profile.student_evidence
    assert user.profile.display_name == ""  # nothing half-saved


def test_too_large_evidence_is_refused(user, settings):
    settings.STUDENT_EVIDENCE_MAX_BYTES = 100
    with pytest.raises(ServiceError, match="limit is"):
        _update(user, SimpleUploadedFile("card.pdf", PDF + b"0" * 200))


def test_empty_evidence_is_refused(user):
    with pytest.raises(ServiceError, match="empty"):
        _update(user, SimpleUploadedFile("card.pdf", b""))


def test_declaring_student_without_evidence_is_refused(user):
    with pytest.raises(ServiceError, match="Attach evidence"):
        _update(user)


def test_editing_details_keeps_a_verified_status(user, organizer):
    _update(user, SimpleUploadedFile("card.pdf", PDF))
    student_verify(actor=organizer, profile_ids=[user.profile.pk])
    profile = _update(user, display_name="Ada L.")
    assert profile.student_status == Status.VERIFIED and profile.display_name == "Ada L."


def test_new_evidence_restarts_the_review(user, organizer):
    _update(user, SimpleUploadedFile("card.pdf", PDF))
    student_reject(actor=organizer, profile_ids=[user.profile.pk], reason="Blurry")
    profile = _update(user, SimpleUploadedFile("card.png", PNG))
    assert profile.student_status == Status.PENDING and profile.student_rejection_reason == ""


def test_withdrawing_student_status_drops_the_evidence(user, organizer):
    _update(user, SimpleUploadedFile("card.pdf", PDF))
    student_verify(actor=organizer, profile_ids=[user.profile.pk])
    profile = _update(user, is_student=False)
    assert profile.student_status == Status.NOT_STUDENT and not profile.student_evidence


def test_organizer_verifies_and_rejects_with_audit_records(organizer):
    a, b = make_user(), make_user()
    for u in (a, b):
        _update(u, SimpleUploadedFile("card.pdf", PDF))
    student_verify(actor=organizer, profile_ids=[a.profile.pk])
    student_reject(actor=organizer, profile_ids=[b.profile.pk], reason="The card expired in 2021.")
    a.profile.refresh_from_db()
    b.profile.refresh_from_db()
    assert a.profile.student_status == Status.VERIFIED and a.profile.student_reviewed_by == organizer
    assert b.profile.student_status == Status.REJECTED
    assert b.profile.student_rejection_reason == "The card expired in 2021."
    verified = AuditEvent.objects.get(action="student.verified")
    rejected = AuditEvent.objects.get(action="student.rejected")
    assert (verified.actor, verified.subject_user) == (organizer, a)
    assert (rejected.actor, rejected.subject_user, rejected.reason) == (organizer, b, "The card expired in 2021.")
    assert rejected.data == {"from": "pending", "to": "rejected"}


def test_rejection_needs_a_reason(organizer, user):
    _update(user, SimpleUploadedFile("card.pdf", PDF))
    with pytest.raises(ServiceError, match="reason"):
        student_reject(actor=organizer, profile_ids=[user.profile.pk], reason="  ")


def test_participants_cannot_review(user):
    _update(user, SimpleUploadedFile("card.pdf", PDF))
    with pytest.raises(PermissionDenied):
        student_verify(actor=user, profile_ids=[user.profile.pk])
    user.profile.refresh_from_db()
    assert user.profile.student_status == Status.PENDING


def test_review_without_evidence_is_refused_and_nothing_changes(organizer):
    with_evidence, without = make_user(), make_user()
    _update(with_evidence, SimpleUploadedFile("card.pdf", PDF))
    with pytest.raises(ServiceError, match="no evidence"):
        student_verify(actor=organizer, profile_ids=[with_evidence.profile.pk, without.profile.pk])
    with_evidence.profile.refresh_from_db()
    assert with_evidence.profile.student_status == Status.PENDING
    assert not AuditEvent.objects.filter(action="student.verified").exists()
