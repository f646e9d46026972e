from django.urls import path

from portal.api import pages

urlpatterns = [
    path("", pages.api_tokens, name="api_tokens"),
    path("<int:token_id>/revoke/", pages.api_token_revoke_view, name="api_token_revoke"),
]
