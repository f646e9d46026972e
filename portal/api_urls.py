from django.urls import path

from portal import apis

urlpatterns = [
    path("challenge/", apis.ChallengeApi.as_view(), name="api-challenge"),
    path("tracks/", apis.TrackListApi.as_view(), name="api-track-list"),
    path("tracks/<slug:slug>/", apis.TrackDetailApi.as_view(), name="api-track-detail"),
    path("me/", apis.MeApi.as_view(), name="api-me"),
    path("me/student-evidence/", apis.StudentEvidenceUploadApi.as_view(), name="api-me-evidence"),
    path("me/tokens/", apis.ApiTokenListCreateApi.as_view(), name="api-token-list"),
    path("me/tokens/<int:token_id>/", apis.ApiTokenRevokeApi.as_view(), name="api-token-revoke"),
    path("me/invitations/", apis.MyInvitationListApi.as_view(), name="api-my-invitations"),
    *[
        path(
            f"me/invitations/<int:invitation_id>/{action}/",
            apis.MyInvitationRespondApi.as_view(),
            {"action": action},
            name=f"api-my-invitation-{action}",
        )
        for action in ("accept", "decline")
    ],
    path("profiles/<int:profile_id>/evidence/", apis.StudentEvidenceDownloadApi.as_view(), name="api-evidence"),
    path("team/", apis.MyTeamApi.as_view(), name="api-my-team"),
    path("teams/<slug:slug>/", apis.TeamDetailApi.as_view(), name="api-team-detail"),
    path("teams/<slug:slug>/invitations/", apis.TeamInvitationListCreateApi.as_view(), name="api-team-invitations"),
    path(
        "teams/<slug:slug>/invitations/<int:invitation_id>/",
        apis.TeamInvitationRevokeApi.as_view(),
        name="api-team-invitation-revoke",
    ),
    path("teams/<slug:slug>/leave/", apis.TeamLeaveApi.as_view(), name="api-team-leave"),
    path(
        "teams/<slug:slug>/members/<int:user_id>/remove/",
        apis.TeamMemberRemoveApi.as_view(),
        name="api-team-member-remove",
    ),
    path("teams/<slug:slug>/captain/", apis.TeamCaptainApi.as_view(), name="api-team-captain"),
    path("invitations/<str:token>/", apis.InvitationPreviewApi.as_view(), name="api-invitation"),
    *[
        path(
            f"invitations/<str:token>/{action}/",
            apis.InvitationRespondApi.as_view(),
            {"action": action},
            name=f"api-invitation-{action}",
        )
        for action in ("accept", "decline")
    ],
    path("organizer/profiles/", apis.OrganizerProfileListApi.as_view(), name="api-organizer-profiles"),
    path(
        "organizer/profiles/<int:profile_id>/student-status/",
        apis.OrganizerStudentReviewApi.as_view(),
        name="api-organizer-student-review",
    ),
]
