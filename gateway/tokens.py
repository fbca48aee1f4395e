"""API tokens: bearer credentials for programs that cannot log in with a session.

A token is ``gw_`` and 43 random URL-safe characters (256 bits). Only its SHA-256 digest is
stored, so a leaked database does not leak usable tokens; the plaintext is shown once, when the
token is issued. A revoked token, or the token of an inactive user, authenticates nobody.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from channels.db import database_sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from gateway.models import ApiToken

TOKEN_PREFIX = "gw_"  # noqa: S105 (a marker, not a secret)
# Characters of the token kept in clear (``prefix``) so that people can tell tokens apart.
SHOWN_CHARS = 8
# Longer than any token we issue: anything longer is refused before it is hashed.
MAX_TOKEN_LENGTH = 128
# How stale ``last_used_at`` may get: at most one write per token per interval, not per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_NAME_LENGTH = 100


def issue_token(user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; return its row and its plaintext, which is never stored.

    Raises:
        ValueError: ``name`` is empty or longer than 100 characters.
    """
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a token's name must be 1-{MAX_NAME_LENGTH} characters")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name, user_id=user.pk, prefix=plaintext[:SHOWN_CHARS], digest=_digest(plaintext)
    )
    return token, plaintext


def authenticate_token(plaintext: str) -> tuple[ApiToken, AbstractBaseUser] | None:
    """The token and its user, if ``plaintext`` is an active token of an active user."""
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > MAX_TOKEN_LENGTH:
        return None
    digest = _digest(plaintext)
    token = ApiToken.objects.select_related("user").filter(digest=digest).first()
    # The lookup already matched the digest; compare again in constant time so that no
    # code path compares a secret-derived value with ``==``.
    if token is None or not hmac.compare_digest(token.digest, digest):
        return None
    if token.revoked_at is not None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # update(), not save(): a save would write back a revoked_at read before a revocation.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token, token.user


async def aauthenticate_token(plaintext: str) -> tuple[ApiToken, AbstractBaseUser] | None:
    """`authenticate_token` from async code."""
    result: tuple[ApiToken, AbstractBaseUser] | None = await database_sync_to_async(
        authenticate_token
    )(plaintext)
    return result


def token_is_active(token_id: int) -> bool:
    """Whether the token still exists, is not revoked, and its user is active."""
    return ApiToken.objects.filter(
        pk=token_id, revoked_at__isnull=True, user__is_active=True
    ).exists()


async def atoken_is_active(token_id: int) -> bool:
    """`token_is_active` from async code."""
    active: bool = await database_sync_to_async(token_is_active)(token_id)
    return active


def revoke(token: ApiToken) -> None:
    """Revoke ``token`` now; revoking it again keeps the first time."""
    now = timezone.now()
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        token.revoked_at = now
    else:
        token.refresh_from_db(fields=["revoked_at"])


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()
