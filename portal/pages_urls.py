from django.urls import path

from portal import views

urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("profile/evidence/<int:profile_id>/", views.evidence_download, name="evidence_download"),
    path("team/", views.my_team, name="my_team"),
    path("team/new/", views.team_create, name="team_create"),
    path("teams/<slug:slug>/", views.team_detail, name="team_detail"),
    path("teams/<slug:slug>/invite/", views.team_invite, name="team_invite"),
    path("teams/<slug:slug>/invite-link/", views.team_invite_link, name="team_invite_link"),
    path(
        "teams/<slug:slug>/invitations/<int:invitation_id>/revoke/", views.team_invite_revoke, name="team_invite_revoke"
    ),
    path("teams/<slug:slug>/leave/", views.team_leave, name="team_leave"),
    path("teams/<slug:slug>/members/<int:user_id>/remove/", views.team_member_remove, name="team_member_remove"),
    path("teams/<slug:slug>/members/<int:user_id>/captain/", views.team_captain, name="team_captain"),
    path("invitations/", views.invitations, name="invitations"),
    path("invitations/<int:invitation_id>/respond/", views.invitation_respond, name="invitation_respond"),
    path("invite/<str:token>/", views.invitation_detail, name="invitation_detail"),
]
