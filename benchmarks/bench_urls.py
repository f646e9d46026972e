from django.http import HttpResponse
from django.urls import include, path


def trivial(request):
    """The yardstick: the same middleware and gunicorn, no database, no template."""
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bench/trivial/", trivial),
    path("", include("portal.urls")),
]
