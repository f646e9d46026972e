from django.urls import path

from evaluation import pipeline_views as views

urlpatterns = [
    path("submissions/<int:pk>/progress/", views.submission_progress_page, name="submission_progress"),
    path("submissions/<int:pk>/progress/live/", views.submission_progress_partial, name="submission_progress_partial"),
    path("submissions/<int:pk>/cancel/", views.submission_cancel_view, name="submission_cancel"),
    path("staff/queue/", views.evaluation_queue_page, name="evaluation_queue"),
]
