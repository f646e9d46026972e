from django.urls import path

from evaluation import views

urlpatterns = [
    path("", views.submission_list, name="submission_list"),
    path("new/", views.submission_new, name="submission_new"),
    path("<int:submission_id>/", views.submission_detail, name="submission_detail"),
    path("<int:submission_id>/upload/", views.submission_upload, name="submission_upload"),
    path("<int:submission_id>/final/", views.submission_final, name="submission_final"),
]
