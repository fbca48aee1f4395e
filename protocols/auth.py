"""API-token authentication for sockets and views.

Programs present a token as ``Authorization: Bearer <token>``; browsers, which cannot set
headers on a WebSocket, offer it as the subprotocol ``token.<token>`` (the server then echoes
that subprotocol when it accepts). A token in the query string is refused: URLs end up in
logs. `TokenAuthMiddleware` only marks the scope; the consumer decides (and closes with 4401
when ``scope["token_error"]`` is set).

Browsers that signed in carry a session instead. A socket outlives the request that opened it,
so the consumer asks `asession_is_current` every few seconds whether its session still signs in
the same user: a sign-out, a password change or a deactivated account ends the socket too.
"""

from collections.abc import Awaitable, Callable, Iterable
from importlib import import_module
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote

from channels.auth import get_user as aget_session_user
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.http.cookie import parse_cookie

from gateway.models import ApiToken
from gateway.tokens import aauthenticate_token, authenticate_token

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUBPROTOCOL_PREFIX = "token."
URL_ERROR = "tokens in URLs are refused; use the Authorization header"
INVALID_ERROR = "invalid or revoked token"


class SessionUserMiddleware:
    """Sets ``scope["user"]`` from the session, as Channels' ``AuthMiddleware`` does (below
    Channels' ``SessionMiddleware``), except that a session with no key is anonymous at once,
    without a call on the database's one thread."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = scope["session"]
        user = ANONYMOUS if session.session_key is None else await aget_session_user(scope)
        return await self.inner({**scope, "user": user}, receive, send)


# Anonymous users are all alike: one serves every socket without a session.
ANONYMOUS = AnonymousUser()


def session_auth(inner: ASGIApp) -> ASGIApp:
    """Cookies, the session and its user, as Channels' ``AuthMiddlewareStack``, for a socket
    that carries a session cookie. A socket without one is anonymous at once and has no
    ``scope["session"]``.

    A burst of reconnecting browsers would otherwise queue a call on the database's one thread
    each, ahead of the handshakes that need it; and Channels' session middleware keeps its own
    copy of the scope, a session store and a wrapper around ``send`` for the socket's whole
    life (about 1 KB per idle socket) for a session it does not have.
    """
    with_session = CookieMiddleware(SessionMiddleware(SessionUserMiddleware(inner)))

    async def session_or_anonymous(scope: Scope, receive: Receive, send: Send) -> None:
        if _has_session_cookie(scope.get("headers", ())):
            return await with_session(scope, receive, send)  # type: ignore[no-any-return]
        return await inner({**scope, "user": ANONYMOUS}, receive, send)

    return session_or_anonymous


def _has_session_cookie(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the Cookie header names the session cookie (read as Channels reads it)."""
    cookies = _header(headers, b"cookie")
    return cookies is not None and settings.SESSION_COOKIE_NAME in parse_cookie(cookies)


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from an API token on WebSocket connections.

    With a valid token: ``scope["user"]`` is its user (over any session user),
    ``scope["api_token_id"]`` its id and, for the subprotocol form, ``scope["token_subprotocol"]``
    the subprotocol to accept with. With an invalid or revoked token, or a token in the URL:
    ``scope["token_error"]`` says why and the user is anonymous. Without a token the scope
    passes through untouched. When both forms are given, the header is used.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await self.inner(scope, receive, send)
        if _query_has_token(scope.get("query_string", b"")):
            scope = {**scope, "token_error": URL_ERROR, "user": ANONYMOUS}
            return await self.inner(scope, receive, send)
        plaintext = _bearer(_header(scope.get("headers", ()), b"authorization"))
        subprotocol = None
        if plaintext is None:
            subprotocol = _token_subprotocol(scope.get("subprotocols", ()))
            if subprotocol is not None:
                plaintext = subprotocol.removeprefix(SUBPROTOCOL_PREFIX)
        if plaintext is None:
            return await self.inner(scope, receive, send)
        # A copy, as Channels' own middleware does: the caller's scope stays as it was.
        scope = dict(scope)
        found = await aauthenticate_token(plaintext)
        if found is None:
            scope["token_error"] = INVALID_ERROR
            scope["user"] = ANONYMOUS  # a session user must not survive a bad token
        else:
            token, user = found
            scope["user"], scope["api_token_id"] = user, token.pk
            if subprotocol is not None:
                scope["token_subprotocol"] = subprotocol
        return await self.inner(scope, receive, send)


def bearer_user(request: HttpRequest) -> tuple[ApiToken, AbstractBaseUser] | None:
    """The token and user of a request's ``Authorization: Bearer`` header, or None."""
    plaintext = _bearer(request.headers.get("Authorization"))
    return None if plaintext is None else authenticate_token(plaintext)


def _bearer(value: str | None) -> str | None:
    """The token of an ``Authorization`` value of the Bearer scheme, else None."""
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header ``name`` (ASGI names are lower case)."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _token_subprotocol(subprotocols: Iterable[str]) -> str | None:
    for subprotocol in subprotocols:
        if subprotocol.startswith(SUBPROTOCOL_PREFIX) and len(subprotocol) > len(
            SUBPROTOCOL_PREFIX
        ):
            return subprotocol
    return None


def _query_has_token(query_string: bytes) -> bool:
    # Decoded first, so that ``tok%65n=`` is caught too; ``access_token=`` is refused as well.
    return "token=" in unquote(query_string.decode("latin-1")).lower()


def session_is_current(session_key: str, user_pk: Any) -> bool:
    """Whether the session ``session_key`` still signs in the user ``user_pk``.

    False once the user signed out (the session is gone), changed their password (the
    session's hash no longer matches) or was deactivated, as Django's own request handling
    would decide.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(cast(HttpRequest, SimpleNamespace(session=store)))
    return bool(user.is_authenticated and user.pk == user_pk)


async def asession_is_current(session_key: str, user_pk: Any) -> bool:
    """`session_is_current` from async code."""
    current: bool = await database_sync_to_async(session_is_current)(session_key, user_pk)
    return current
