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
    path("api/v1/", include("portal.api.urls")),
    path("profile/tokens/", include("portal.api.page_urls")),
    path("leaderboard/", include("leaderboard.urls")),
]

# JSON in the API's error format for /api/ paths; Django's own pages elsewhere.
handler400 = "portal.api.errors.handler400"
handler403 = "portal.api.errors.handler403"
handler404 = "portal.api.errors.handler404"
handler500 = "portal.api.errors.handler500"
