"""Writes for personal API tokens."""

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from portal.api.models import ApiToken
from portal.errors import NotFound, ServiceError

MAX_ACTIVE_TOKENS = 20
# Writing last_used_at on every request would turn each API read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_token_create(*, user, name: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Create a token; returns it with its secret, which is never stored and shown only now."""
    name = (name or "").strip()
    if not name:
        raise ServiceError("Give the token a name, e.g. the machine it is for.", field="name")
    if len(name) > 100:
        raise ServiceError("A token name has at most 100 characters.", field="name")
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ServiceError("The expiry date must be in the future.", field="expires_at")
    with transaction.atomic():
        active = (
            ApiToken.objects.select_for_update()
            .filter(user=user, revoked_at__isnull=True)
            .exclude(expires_at__lte=now)
            .count()
        )
        if active >= MAX_ACTIVE_TOKENS:
            raise ServiceError(
                f"You already have {MAX_ACTIVE_TOKENS} active tokens; revoke one you no longer use first."
            )
        secret, prefix, token_hash = ApiToken.new_secret()
        token = ApiToken.objects.create(
            user=user, name=name, prefix=prefix, token_hash=token_hash, expires_at=expires_at, created_at=now
        )
    return token, secret


def api_token_revoke(*, user, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens. Revoking twice is harmless."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().filter(user=user, pk=token_id).first()
        if token is None:
            raise NotFound("No such token among yours.")
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(secret: str) -> ApiToken:
    """The active token with this secret, its last use recorded. Raises ServiceError otherwise."""
    token = (
        ApiToken.objects.select_related("user").filter(token_hash=ApiToken.hash_secret(secret)).first()
        if secret
        else None
    )
    if token is None:
        raise ServiceError("Unknown API token.", code="authentication_failed", status_code=401)
    if token.revoked_at is not None:
        raise ServiceError("This API token was revoked.", code="authentication_failed", status_code=401)
    now = timezone.now()
    if token.is_expired(now):
        raise ServiceError(
            f"This API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC.",
            code="authentication_failed",
            status_code=401,
        )
    if not token.user.is_active:
        raise ServiceError("This account is disabled.", code="authentication_failed", status_code=401)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
