"""Every write of the competition core. Views call exactly one of these; refusals raise ServiceError."""

from portal.services.audit import audit_record
from portal.services.evidence import evidence_check, evidence_content_type, evidence_sniff
from portal.services.profiles import profile_ensure, profile_update, student_reject, student_verify
from portal.services.teams import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_revoke,
    team_captain_transfer,
    team_create,
    team_leave,
    team_member_remove,
    team_name_clean,
)

__all__ = [
    "audit_record",
    "evidence_check",
    "evidence_content_type",
    "evidence_sniff",
    "invitation_accept",
    "invitation_create",
    "invitation_decline",
    "invitation_revoke",
    "profile_ensure",
    "profile_update",
    "student_reject",
    "student_verify",
    "team_captain_transfer",
    "team_create",
    "team_leave",
    "team_member_remove",
    "team_name_clean",
]
