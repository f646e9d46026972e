"""Request rates per scope. Rates come from settings (REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], filled from the
environment) and are read on every request, so tests and deployments can change them without a restart of DRF."""

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class _LiveRate:
    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class AnonThrottle(_LiveRate, AnonRateThrottle):
    """Anonymous clients, by IP."""

    scope = "anon"


class UserThrottle(_LiveRate, UserRateThrottle):
    """Logged-in users and tokens, by user."""

    scope = "user"


class SubmissionThrottle(_LiveRate, UserRateThrottle):
    """Creating submissions: a tighter limit on top of the daily quota, against scripts gone wrong."""

    scope = "submission"

    def allow_request(self, request, view):
        if request.method != "POST":
            return True
        return super().allow_request(request, view)
