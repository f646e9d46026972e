"""Pages of the competition core. Views validate and authorise, then call one service."""

from portal.views.invitations import invitation_detail, invitation_respond, invitations
from portal.views.pages import home
from portal.views.profile import evidence_download, profile
from portal.views.teams import (
    my_team,
    team_captain,
    team_create,
    team_detail,
    team_invite,
    team_invite_link,
    team_invite_revoke,
    team_leave,
    team_member_remove,
)

__all__ = [
    "evidence_download",
    "home",
    "invitation_detail",
    "invitation_respond",
    "invitations",
    "my_team",
    "profile",
    "team_captain",
    "team_create",
    "team_detail",
    "team_invite",
    "team_invite_link",
    "team_invite_revoke",
    "team_leave",
    "team_member_remove",
]
