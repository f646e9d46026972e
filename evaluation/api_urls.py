from django.urls import path

from evaluation import apis

urlpatterns = [
    path("submissions/", apis.SubmissionListCreateApi.as_view(), name="api-submission-list"),
    path("submissions/quota/", apis.SubmissionQuotaApi.as_view(), name="api-submission-quota"),
    path("submissions/<int:submission_id>/", apis.SubmissionDetailApi.as_view(), name="api-submission-detail"),
    path("submissions/<int:submission_id>/cancel/", apis.SubmissionCancelApi.as_view(), name="api-submission-cancel"),
    path("submissions/<int:submission_id>/final/", apis.SubmissionFinalApi.as_view(), name="api-submission-final"),
    path(
        "organizer/submissions/<int:submission_id>/rerun/",
        apis.OrganizerSubmissionRerunApi.as_view(),
        name="api-organizer-rerun",
    ),
    path(
        "organizer/submissions/<int:submission_id>/cancel/",
        apis.OrganizerSubmissionCancelApi.as_view(),
        name="api-organizer-cancel",
    ),
    path(
        "organizer/submissions/<int:submission_id>/disqualify/",
        apis.OrganizerSubmissionDisqualifyApi.as_view(),
        name="api-organizer-disqualify",
    ),
    path(
        "organizer/submissions/<int:submission_id>/priority/",
        apis.OrganizerSubmissionPriorityApi.as_view(),
        name="api-organizer-priority",
    ),
]
