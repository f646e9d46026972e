"""Personal API tokens as DRF authentication: `Authorization: Bearer llmec_…` (or `Token llmec_…`)."""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from portal.api.services import api_token_authenticate
from portal.errors import ServiceError

KEYWORDS = (b"bearer", b"token")


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in KEYWORDS:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the header as 'Authorization: Bearer <token>'.")
        try:
            secret = parts[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token contains invalid characters.")
        try:
            token = api_token_authenticate(secret)
        except ServiceError as error:
            raise exceptions.AuthenticationFailed(error.message)
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Present, so unauthenticated requests get 401 with a challenge rather than 403.
        return 'Bearer realm="api"'


# Registers the OpenAPI description of this scheme whenever DRF loads the authentication classes.
import portal.api.schema  # noqa: E402,F401
