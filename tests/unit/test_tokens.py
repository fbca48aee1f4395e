"""API tokens: issuing, authenticating, revoking; the WebSocket middleware, views and admin."""

import io
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.sessions import InstanceSessionWrapper
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory
from django.utils import timezone

import protocols.auth
from gateway.models import ApiToken
from gateway.tokens import (
    aauthenticate_token,
    atoken_is_active,
    authenticate_token,
    issue_token,
    revoke,
    token_is_active,
)
from protocols.auth import TokenAuthMiddleware, bearer_user, session_auth

URL_ERROR = "tokens in URLs are refused; use the Authorization header"
INVALID_ERROR = "invalid or revoked token"


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("meter")


# Issuing and authenticating


@pytest.mark.django_db
def test_an_issued_token_authenticates_its_user(user: Any) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    assert re.fullmatch(r"gw_[A-Za-z0-9_-]{43}", plaintext)
    assert (token.name, token.prefix, token.is_active) == ("greenhouse", plaintext[:8], True)
    found = authenticate_token(plaintext)
    assert found is not None
    assert found[0].pk == token.pk
    assert found[1].pk == user.pk


@pytest.mark.django_db
def test_tokens_are_unique(user: Any) -> None:
    first, second = issue_token(user, "a")[1], issue_token(user, "b")[1]
    assert first != second
    assert [authenticate_token(t)[0].name for t in (first, second)] == ["a", "b"]


@pytest.mark.django_db
def test_the_plaintext_is_never_stored(user: Any) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    secret_part = plaintext.removeprefix("gw_")
    for row in ApiToken.objects.values():
        for value in row.values():
            assert secret_part[:12] not in str(value)
    assert token.digest != plaintext
    assert len(token.digest) == 64


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # one character off
        lambda t: t + "x",
        lambda t: t.removeprefix("gw_"),
        lambda t: t.upper(),
        lambda t: "",
        lambda t: "gw_" + "x" * 10_000,
    ],
)
def test_a_wrong_token_authenticates_nobody(user: Any, mangle: Any) -> None:
    _, plaintext = issue_token(user, "greenhouse")
    assert authenticate_token(mangle(plaintext)) is None


@pytest.mark.django_db
def test_a_revoked_token_authenticates_nobody(user: Any) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    _, other_plaintext = issue_token(user, "other")
    revoke(token)
    assert token.revoked_at is not None
    assert not token.is_active
    assert authenticate_token(plaintext) is None
    assert authenticate_token(other_plaintext) is not None  # only the one revoked


@pytest.mark.django_db
def test_revoking_twice_keeps_the_first_time(user: Any) -> None:
    token, _ = issue_token(user, "greenhouse")
    revoke(token)
    first = token.revoked_at
    stale = ApiToken.objects.get(pk=token.pk)
    stale.revoked_at = None  # as read before the revocation
    revoke(stale)
    assert stale.revoked_at == first
    assert ApiToken.objects.get(pk=token.pk).revoked_at == first


@pytest.mark.django_db
def test_the_token_of_an_inactive_user_authenticates_nobody(user: Any) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    user.is_active = False
    user.save()
    assert authenticate_token(plaintext) is None
    assert not token_is_active(token.pk)
    user.is_active = True
    user.save()
    assert authenticate_token(plaintext) is not None


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
@pytest.mark.django_db
def test_a_token_needs_a_name(user: Any, name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        issue_token(user, name)
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_a_minute(
    user: Any, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    assert token.last_used_at is None
    start = timezone.now()
    clock = [start]
    monkeypatch.setattr("gateway.tokens.timezone.now", lambda: clock[0])

    def last_used() -> datetime | None:
        return ApiToken.objects.get(pk=token.pk).last_used_at

    authenticate_token(plaintext)
    assert last_used() == start
    clock[0] = start + timedelta(seconds=59)
    with django_assert_num_queries(1):  # the lookup, no write
        authenticate_token(plaintext)
    assert last_used() == start
    clock[0] = start + timedelta(seconds=61)
    with django_assert_num_queries(2):  # the lookup and the write
        authenticate_token(plaintext)
    assert last_used() == start + timedelta(seconds=61)


@pytest.mark.django_db
def test_token_is_active_follows_revocation(user: Any) -> None:
    token, _ = issue_token(user, "greenhouse")
    assert token_is_active(token.pk)
    revoke(token)
    assert not token_is_active(token.pk)
    assert not token_is_active(token.pk + 1000)


@pytest.mark.django_db(transaction=True)
async def test_async_variants(django_user_model: Any) -> None:
    user = await database_sync_to_async(django_user_model.objects.create_user)("meter")
    token, plaintext = await database_sync_to_async(issue_token)(user, "greenhouse")
    found = await aauthenticate_token(plaintext)
    assert found is not None
    assert found[1].pk == user.pk
    assert await atoken_is_active(token.pk)
    await database_sync_to_async(revoke)(token)
    assert not await atoken_is_active(token.pk)
    assert await aauthenticate_token(plaintext) is None


# The issue_token command


@pytest.mark.django_db
def test_the_command_prints_a_token_that_works(user: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_token", "meter", "greenhouse display", stdout=out, stderr=err)
    plaintext = out.getvalue().strip()
    assert "\n" not in plaintext  # the token alone, for TOKEN=$(...)
    found = authenticate_token(plaintext)
    assert found is not None
    assert found[0].name == "greenhouse display"
    assert found[1].pk == user.pk
    assert "cannot be shown again" in err.getvalue()


@pytest.mark.django_db
def test_the_command_names_an_unknown_user(user: Any) -> None:
    with pytest.raises(CommandError, match="nobody"):
        call_command("issue_token", "nobody", "x", stdout=io.StringIO(), stderr=io.StringIO())
    assert not ApiToken.objects.exists()


# The WebSocket middleware

async_db = pytest.mark.django_db(transaction=True)


class Recorder:
    """An inner ASGI app that keeps the scope it was called with."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope


def ws_scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
    query: bytes = b"",
    user: Any = None,
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws/rooms/lab/",
        "query_string": query,
        "headers": [(b"origin", b"http://localhost"), *(headers or [])],
        "subprotocols": subprotocols or [],
        "user": user if user is not None else AnonymousUser(),
    }


async def run(scope: dict[str, Any]) -> dict[str, Any]:
    inner = Recorder()

    async def receive() -> dict[str, Any]:
        raise AssertionError("the middleware must not receive")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("the middleware must not send")

    await TokenAuthMiddleware(inner)(scope, receive, send)
    assert inner.scope is not None
    return inner.scope


async def issued(django_user_model: Any, username: str = "meter") -> tuple[Any, ApiToken, str]:
    user = await database_sync_to_async(django_user_model.objects.create_user)(username)
    token, plaintext = await database_sync_to_async(issue_token)(user, "greenhouse")
    return user, token, plaintext


@async_db
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_a_header_token_sets_the_user(django_user_model: Any, scheme: str) -> None:
    user, token, plaintext = await issued(django_user_model)
    scope = await run(ws_scope(headers=[(b"authorization", f"{scheme} {plaintext}".encode())]))
    assert scope["user"].pk == user.pk
    assert scope["api_token_id"] == token.pk
    assert "token_subprotocol" not in scope
    assert "token_error" not in scope


@async_db
async def test_a_subprotocol_token_sets_the_user_and_the_subprotocol(
    django_user_model: Any,
) -> None:
    user, token, plaintext = await issued(django_user_model)
    scope = await run(ws_scope(subprotocols=["chat", f"token.{plaintext}"]))
    assert scope["user"].pk == user.pk
    assert scope["api_token_id"] == token.pk
    assert scope["token_subprotocol"] == f"token.{plaintext}"


@async_db
async def test_the_callers_scope_is_not_changed(django_user_model: Any) -> None:
    _, _, plaintext = await issued(django_user_model)
    scope = ws_scope(headers=[(b"authorization", f"Bearer {plaintext}".encode())])
    before = dict(scope)
    seen = await run(scope)
    assert seen is not scope
    assert scope == before


@async_db
async def test_the_header_wins_over_the_subprotocol(django_user_model: Any) -> None:
    user, _, plaintext = await issued(django_user_model)
    scope = await run(
        ws_scope(
            headers=[(b"authorization", f"Bearer {plaintext}".encode())],
            subprotocols=["token.gw_" + "x" * 43],
        )
    )
    assert scope["user"].pk == user.pk
    assert "token_subprotocol" not in scope


@async_db
async def test_a_token_overrides_the_session_user(django_user_model: Any) -> None:
    session_user = await database_sync_to_async(django_user_model.objects.create_user)("person")
    user, _, plaintext = await issued(django_user_model)
    scope = await run(
        ws_scope(headers=[(b"authorization", f"Bearer {plaintext}".encode())], user=session_user)
    )
    assert scope["user"].pk == user.pk


@async_db
@pytest.mark.parametrize(
    "query", [b"token=gw_abc", b"room=x&token=gw_abc", b"access_token=gw_abc", b"tok%65n=gw_abc"]
)
async def test_a_token_in_the_url_is_refused(django_user_model: Any, query: bytes) -> None:
    _, _, plaintext = await issued(django_user_model)
    # Even with a valid token in the header: the one in the URL has leaked.
    headers = [(b"authorization", f"Bearer {plaintext}".encode())]
    scope = await run(ws_scope(headers=headers, query=query))
    assert scope["token_error"] == URL_ERROR
    assert not scope["user"].is_authenticated
    assert "api_token_id" not in scope


@async_db
@pytest.mark.parametrize("form", ["header", "subprotocol"])
@pytest.mark.parametrize("revoked", [False, True])
async def test_an_invalid_or_revoked_token_is_marked_and_anonymous(
    django_user_model: Any, form: str, revoked: bool
) -> None:
    session_user = await database_sync_to_async(django_user_model.objects.create_user)("person")
    _, token, plaintext = await issued(django_user_model)
    if revoked:
        await database_sync_to_async(revoke)(token)
    else:
        plaintext = "gw_" + "x" * 43
    if form == "header":
        scope = ws_scope(headers=[(b"authorization", f"Bearer {plaintext}".encode())])
    else:
        scope = ws_scope(subprotocols=[f"token.{plaintext}"])
    scope["user"] = session_user
    scope = await run(scope)
    assert scope["token_error"] == INVALID_ERROR
    assert not scope["user"].is_authenticated  # not even the session user
    assert "api_token_id" not in scope
    assert "token_subprotocol" not in scope


@async_db
@pytest.mark.parametrize(
    ("headers", "subprotocols"),
    [
        ([], []),
        ([], ["chat", "token."]),
        ([(b"authorization", b"Basic bWV0ZXI6eA==")], []),
        ([(b"authorization", b"Bearer ")], []),
    ],
)
async def test_without_a_token_the_scope_passes_unchanged(
    headers: list[tuple[bytes, bytes]], subprotocols: list[str]
) -> None:
    user = AnonymousUser()
    scope = ws_scope(headers=headers, subprotocols=subprotocols, query=b"room=lab", user=user)
    before = dict(scope)
    seen = await run(scope)
    assert seen is scope
    assert seen == before
    assert seen["user"] is user


async def test_other_scopes_pass_unchanged() -> None:
    scope = {"type": "http", "query_string": b"token=gw_abc", "headers": []}
    seen = await run(scope)
    assert seen is scope
    assert "token_error" not in seen


@async_db
async def test_behind_the_session_stack_the_subprotocol_can_be_echoed(
    django_user_model: Any,
) -> None:
    user, _, plaintext = await issued(django_user_model)
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": scope.get("token_subprotocol")})
        await receive()

    ws = WebsocketCommunicator(
        session_auth(TokenAuthMiddleware(app)),
        "/ws/rooms/lab/",
        subprotocols=["token." + plaintext],
    )
    connected, subprotocol = await ws.connect()
    assert connected
    assert subprotocol == "token." + plaintext
    assert scopes[0]["user"].pk == user.pk
    await ws.disconnect()


async def scope_user(headers: list[tuple[bytes, bytes]]) -> Any:
    """The user `session_auth` puts in a socket's scope, for these request headers."""
    users: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        users.append(scope["user"])
        await receive()
        await send({"type": "websocket.close"})

    ws = WebsocketCommunicator(session_auth(app), "/ws/rooms/lab/", headers=headers)
    await ws.connect()
    await ws.disconnect()
    return users[0]


async def test_a_socket_without_a_session_cookie_is_anonymous_without_asking_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def asked(scope: Any) -> Any:
        raise AssertionError("the session's user was looked up")

    monkeypatch.setattr(protocols.auth, "aget_session_user", asked)
    user = await scope_user([(b"cookie", b"csrftoken=abc")])
    assert not user.is_authenticated


async def test_a_socket_without_a_session_cookie_keeps_no_session_and_sends_unwrapped() -> None:
    seen: list[tuple[dict[str, Any], Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope, send))
        await receive()
        await send({"type": "websocket.close"})

    ws = WebsocketCommunicator(session_auth(app), "/ws/rooms/lab/")
    await ws.connect()
    await ws.disconnect()
    scope, send = seen[0]
    assert "session" not in scope
    assert not scope["user"].is_authenticated
    assert not isinstance(getattr(send, "__self__", None), InstanceSessionWrapper)


@async_db
async def test_a_socket_with_a_signed_in_session_carries_its_user(django_user_model: Any) -> None:
    user = await django_user_model.objects.acreate(username="sessioned")
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    await store.acreate()
    cookie = f"{settings.SESSION_COOKIE_NAME}={store.session_key}".encode()
    assert (await scope_user([(b"cookie", cookie)])).pk == user.pk
    # A cookie naming no session is anonymous, as in Django.
    stale = f"{settings.SESSION_COOKIE_NAME}=nosuchsession".encode()
    assert not (await scope_user([(b"cookie", stale)])).is_authenticated


# Views


@pytest.mark.django_db
def test_bearer_user_reads_the_authorization_header(user: Any) -> None:
    token, plaintext = issue_token(user, "greenhouse")
    factory = RequestFactory()
    found = bearer_user(factory.get("/", headers={"Authorization": f"Bearer {plaintext}"}))
    assert found is not None
    assert (found[0].pk, found[1].pk) == (token.pk, user.pk)
    for request in (
        factory.get("/"),
        factory.get("/", {"token": plaintext}),
        factory.get("/", headers={"Authorization": plaintext}),
        factory.get("/", headers={"Authorization": f"Basic {plaintext}"}),
        factory.get("/", headers={"Authorization": "Bearer gw_nope"}),
    ):
        assert bearer_user(request) is None


# The admin


@pytest.mark.django_db
def test_the_admin_issues_a_token_and_shows_it_once(django_user_model: Any, user: Any) -> None:
    admin_user = django_user_model.objects.create_superuser("root")
    client = Client()
    client.force_login(admin_user)
    response = client.post(
        "/admin/gateway/apitoken/add/", {"name": "display", "user": user.pk}, follow=True
    )
    assert response.status_code == 200
    shown = re.findall(r"gw_[A-Za-z0-9_-]{43}", response.content.decode())
    assert len(shown) == 1
    found = authenticate_token(shown[0])
    assert found is not None
    assert (found[0].name, found[1].pk) == ("display", user.pk)
    assert ApiToken.objects.count() == 1
    # The admin's own notice names the issued row, not a blank one.
    assert f"display ({found[0].prefix}…)</a>” was added" in response.content.decode()
    page = client.get(f"/admin/gateway/apitoken/{found[0].pk}/change/").content.decode()
    assert found[0].digest not in page
    assert shown[0] not in page


@pytest.mark.django_db
def test_the_admin_action_revokes_tokens(django_user_model: Any, user: Any) -> None:
    admin_user = django_user_model.objects.create_superuser("root")
    client = Client()
    client.force_login(admin_user)
    kept, _ = issue_token(user, "kept")
    gone, _ = issue_token(user, "gone")
    response = client.post(
        "/admin/gateway/apitoken/",
        {"action": "revoke_selected", "_selected_action": [gone.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert not token_is_active(gone.pk)
    assert token_is_active(kept.pk)
