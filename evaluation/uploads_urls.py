"""The tus endpoint, mounted at /api/v1/uploads/ by portal/urls.py."""

from django.urls import path

from evaluation import uploads_views

urlpatterns = [
    path("", uploads_views.uploads_collection, name="tus-uploads"),
    path("<uuid:upload_id>/", uploads_views.upload_resource, name="tus-upload"),
    # tus-js-client and tuspy keep the Location as given; accept it without the trailing slash too.
    path("<uuid:upload_id>", uploads_views.upload_resource),
]
