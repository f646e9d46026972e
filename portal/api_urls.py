from django.urls import path

from portal import apis

urlpatterns = [
    path("challenge/", apis.ChallengeApi.as_view(), name="api-challenge"),
    path("tracks/", apis.TrackListApi.as_view(), name="api-track-list"),
    path("tracks/<slug:slug>/", apis.TrackDetailApi.as_view(), name="api-track-detail"),
    path("me/tokens/", apis.ApiTokenListCreateApi.as_view(), name="api-token-list"),
    path("me/tokens/<int:token_id>/", apis.ApiTokenRevokeApi.as_view(), name="api-token-revoke"),
]
