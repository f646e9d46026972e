from django.urls import path

from leaderboard import apis

urlpatterns = [
    path("leaderboards/<slug:track>/", apis.LeaderboardApi.as_view(), name="api-leaderboard"),
    path("leaderboards/<slug:track>/pareto/", apis.ParetoApi.as_view(), name="api-leaderboard-pareto"),
    path("leaderboards/<slug:track>/awards/", apis.AwardsApi.as_view(), name="api-leaderboard-awards"),
    path(
        "submissions/<int:submission_id>/analysis/",
        apis.SubmissionAnalysisApi.as_view(),
        name="api-submission-analysis",
    ),
    path(
        "organizer/tracks/<slug:track>/finalize/",
        apis.OrganizerTrackFinalizeApi.as_view(),
        name="api-organizer-finalize",
    ),
    path("organizer/challenge/reveal/", apis.OrganizerHiddenRevealApi.as_view(), name="api-organizer-reveal"),
    path(
        "organizer/submissions/<int:submission_id>/reproduction/",
        apis.OrganizerReproductionApi.as_view(),
        name="api-organizer-reproduction",
    ),
]
