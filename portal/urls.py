from django.contrib import admin
from django.urls import include, path

from portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("", include("portal.pages_urls")),
    path("", include("evaluation.pipeline_urls")),
    path("api/v1/uploads/", include("evaluation.uploads_urls")),
    path("submissions/", include("evaluation.urls")),
    path("leaderboard/", include("leaderboard.urls")),
]
