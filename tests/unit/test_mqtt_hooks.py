"""The HTTP hooks EMQX and mosquitto-go-auth ask: the decision table, the secret, the body."""

import base64
import json
import logging
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from bridges.conf import MqttSettings
from bridges.rules import DEFAULT_RULES
from gateway import metrics
from tests.support.decision_table import ROWS, Row, make_world
from tests.support.prometheus import parse_exposition

TOKEN = "hook-secret-0123456789abcdef"
BRIDGE_USER, BRIDGE_PASSWORD = "gateway-admin", "bridge-password"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIALECTS = ("emqx-json", "goauth-json", "goauth-form")
GOAUTH_ACC = {"receive": 1, "publish": 2, "subscribe": 4}
# The hooks read the database through Channels' database_sync_to_async, which closes the
# connection of a test run inside one transaction: these tests commit.
db = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def hooks(settings: Any) -> None:
    settings.MQTT_HOOK_TOKEN = TOKEN
    settings.MQTT_ANONYMOUS = "public"
    settings.MQTT = MqttSettings(
        host="broker", port=1883, username=BRIDGE_USER, password=BRIDGE_PASSWORD
    )
    settings.BRIDGE_RULES = DEFAULT_RULES


def post(
    client: Client,
    path: str,
    fields: dict[str, Any],
    *,
    form: bool = False,
    headers: dict[str, str] | None = None,
) -> Any:
    if form:
        body, content_type = urlencode(fields), "application/x-www-form-urlencoded"
    else:
        body, content_type = json.dumps(fields), "application/json"
    return client.post(
        path, body, content_type=content_type, headers=AUTH if headers is None else headers
    )


def allowed(dialect: str, response: Any) -> bool:
    """The broker's reading of an answer (anything but an explicit allow denies)."""
    if dialect.startswith("emqx"):
        assert response.status_code == 200, response.content
        result = response.json()["result"]
        assert result in ("allow", "deny")
        return bool(result == "allow")
    assert response.status_code in (200, 403), response.content
    ok = response.json()["ok"]
    assert ok is (response.status_code == 200)  # the status and json response modes agree
    return bool(ok)


def username(row: Row) -> str:
    return BRIDGE_USER if row.who == "bridge" else row.who or ""


def ask(client: Client, dialect: str, row: Row, password: str = "") -> bool:
    """Send ``row`` as the broker of ``dialect`` would; whether the answer lets it through."""
    form = dialect == "goauth-form"
    base = {"username": username(row), "clientid": f"client-{row.who}"}
    if row.action == "connect":
        path = "/mqtt/emqx/authn" if dialect.startswith("emqx") else "/mqtt/goauth/user"
        return allowed(dialect, post(client, path, {**base, "password": password}, form=form))
    if dialect.startswith("emqx"):
        fields = {**base, "topic": row.topic, "action": row.action}
        return allowed(dialect, post(client, "/mqtt/emqx/authz", fields))
    fields = {**base, "topic": row.topic, "acc": GOAUTH_ACC[row.action]}
    return allowed(dialect, post(client, "/mqtt/goauth/acl", fields, form=form))


@db
@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("row", ROWS, ids=str)
def test_the_hooks_answer_every_row_of_the_table(client: Client, dialect: str, row: Row) -> None:
    if dialect.startswith("emqx") and row.action == "receive":
        # EMQX checks publications and subscriptions only: it never asks about a delivery.
        pytest.skip("EMQX has no receive check")
    secrets = make_world()
    password = BRIDGE_PASSWORD if row.who == "bridge" else secrets.get(row.who or "", "")
    assert ask(client, dialect, row, password) is row.allow
    if row.action == "connect" and row.allow and row.who is not None:
        assert ask(client, dialect, row, password + "x") is False  # a wrong password


@db
@pytest.mark.parametrize(
    ("acc", "who", "topic", "expected"),
    [
        (3, "pump-7", "rooms/plant/pump-7/t", True),  # may read and write there
        (3, "panel-1", "rooms/plant/pump-7/t", False),  # may only read
        (3, "panel-1", "rooms/plant/panel-1/t", False),
    ],
)
def test_goauth_readwrite_needs_both(
    client: Client, acc: int, who: str, topic: str, expected: bool
) -> None:
    make_world()
    fields = {"username": who, "clientid": "c", "topic": topic, "acc": acc}
    assert allowed("goauth-json", post(client, "/mqtt/goauth/acl", fields)) is expected


@db
def test_goauth_has_no_superusers(client: Client) -> None:
    for form in (False, True):
        response = post(client, "/mqtt/goauth/superuser", {"username": BRIDGE_USER}, form=form)
        assert response.status_code == 403


@db
def test_emqx_authn_never_makes_superusers(client: Client) -> None:
    fields = {"username": BRIDGE_USER, "password": BRIDGE_PASSWORD, "clientid": "bridge"}
    answer = post(client, "/mqtt/emqx/authn", fields).json()
    assert answer == {"result": "allow", "is_superuser": False}


@db
def test_anonymous_clients_connect_only_when_anonymous_mqtt_is_public(
    client: Client, settings: Any
) -> None:
    fields = {"username": "", "password": "", "clientid": "anon"}
    assert allowed("emqx-json", post(client, "/mqtt/emqx/authn", fields))
    for value in ("none", None):
        settings.MQTT_ANONYMOUS = value
        assert not allowed("emqx-json", post(client, "/mqtt/emqx/authn", fields))
        assert not allowed("goauth-form", post(client, "/mqtt/goauth/user", fields, form=True))


@db
def test_the_bridge_needs_a_password_to_authenticate(client: Client, settings: Any) -> None:
    settings.MQTT = MqttSettings(host="broker", port=1883, username=BRIDGE_USER)
    fields = {"username": BRIDGE_USER, "password": "", "clientid": "bridge"}
    assert not allowed("emqx-json", post(client, "/mqtt/emqx/authn", fields))


PATHS = (
    "/mqtt/emqx/authn",
    "/mqtt/emqx/authz",
    "/mqtt/goauth/user",
    "/mqtt/goauth/superuser",
    "/mqtt/goauth/acl",
)
ACL_ASK = {"username": "pump-7", "clientid": "c", "topic": "rooms/open/pump-7/t"}


@db
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", TOKEN, f"Token {TOKEN}"],
    ids=["missing", "longer", "shorter", "empty", "no-scheme", "other-scheme"],
)
def test_a_missing_or_wrong_secret_is_refused(
    client: Client, path: str, authorization: str | None
) -> None:
    before = metrics.get("mqtt_hook_refused", "unauthorised")
    headers = {} if authorization is None else {"Authorization": authorization}
    fields = {**ACL_ASK, "password": "p", "action": "publish", "acc": 2}
    response = post(client, path, fields, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorised"
    assert metrics.get("mqtt_hook_refused", "unauthorised") == before + 1


@db
def test_the_secret_may_come_as_basic_credentials(client: Client) -> None:
    """go-auth cannot set headers; Go sends the user part of its URL as Basic credentials."""
    make_world()
    fields = {**ACL_ASK, "acc": 2}
    for user in ("broker", ""):
        basic = base64.b64encode(f"{user}:{TOKEN}".encode()).decode()
        response = post(
            client, "/mqtt/goauth/acl", fields, headers={"Authorization": f"Basic {basic}"}
        )
        assert response.status_code == 200
    wrong = base64.b64encode(f"{TOKEN}:broker".encode()).decode()
    response = post(client, "/mqtt/goauth/acl", fields, headers={"Authorization": f"Basic {wrong}"})
    assert response.status_code == 401
    response = post(client, "/mqtt/goauth/acl", fields, headers={"Authorization": "Basic !!"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", PATHS)
def test_the_hooks_do_not_exist_without_a_token(client: Client, settings: Any, path: str) -> None:
    settings.MQTT_HOOK_TOKEN = None
    assert post(client, path, {**ACL_ASK, "acc": 2}).status_code == 404
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", PATHS)
def test_only_post_is_allowed(client: Client, path: str) -> None:
    assert client.get(path, headers=AUTH).status_code == 405
    assert client.put(path, "{}", content_type="application/json", headers=AUTH).status_code == 405


@db
@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/mqtt/emqx/authz", b"{not json", "application/json", 400),
        ("/mqtt/emqx/authz", b'["a list"]', "application/json", 400),
        ("/mqtt/emqx/authz", b"\xff\xfe", "application/json", 400),
        ("/mqtt/emqx/authz", b'{"username": "pump-7", "topic": "t"}', "application/json", 400),
        (
            "/mqtt/emqx/authz",
            b'{"username": "pump-7", "topic": "t", "action": "all"}',
            "application/json",
            400,
        ),
        ("/mqtt/emqx/authn", b'{"username": 7, "password": ""}', "application/json", 400),
        ("/mqtt/emqx/authn", b'{"username": "a"}', "application/json", 400),
        ("/mqtt/goauth/acl", b"username=a&topic=t&acc=8", "application/x-www-form-urlencoded", 400),
        (
            "/mqtt/goauth/acl",
            b'{"username": "a", "topic": "t", "acc": true}',
            "application/json",
            400,
        ),
        (
            "/mqtt/goauth/acl",
            b"username=a&username=b&topic=t&acc=2",
            "application/x-www-form-urlencoded",
            400,
        ),
        ("/mqtt/goauth/acl", b"username", "application/x-www-form-urlencoded", 400),
        ("/mqtt/goauth/user", b"username=a&password=%FF", "application/x-www-form-urlencoded", 400),
        ("/mqtt/goauth/user", b"username=a&password=b", "text/plain", 415),
        (
            "/mqtt/goauth/user",
            b"username=" + b"a" * 17000,
            "application/x-www-form-urlencoded",
            413,
        ),
    ],
)
def test_a_malformed_body_is_refused(
    client: Client, path: str, body: bytes, content_type: str, status: int
) -> None:
    response = client.post(path, body, content_type=content_type, headers=AUTH)
    assert response.status_code == status
    assert "error" in response.json()


@db
def test_a_failing_decision_denies(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_world()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr("protocols.mqtt_hooks.mqtt_access", broken)
    monkeypatch.setattr("protocols.mqtt_hooks.authenticate_device", broken)
    before = metrics.get("mqtt_hook_errors", "emqx_authz")
    fields = {**ACL_ASK, "action": "publish"}  # allowed, were the decision working
    with caplog.at_level(logging.ERROR, logger="protocols.mqtt_hooks"):
        assert post(client, "/mqtt/emqx/authz", fields).json() == {"result": "deny"}
        response = post(client, "/mqtt/goauth/acl", {**ACL_ASK, "acc": 2}, form=True)
        assert response.status_code == 403
        user = {"username": "pump-7", "password": "p", "clientid": "c"}
        assert post(client, "/mqtt/emqx/authn", user).json()["result"] == "deny"
        assert post(client, "/mqtt/goauth/user", user).status_code == 403
    assert metrics.get("mqtt_hook_errors", "emqx_authz") == before + 1
    assert "the database is gone" in caplog.text


@db
def test_denials_show_on_the_metrics_page(client: Client) -> None:
    make_world()
    fields = {**ACL_ASK, "topic": "rooms/vault/pump-7/t", "action": "publish"}
    assert post(client, "/mqtt/emqx/authz", fields).json() == {"result": "deny"}
    families = parse_exposition(client.get("/metrics").content.decode())
    denied = families["gateway_mqtt_hook_denied_total"]
    assert denied.kind == "counter"
    values = {s.labels.get("check"): s.value for s in denied.samples}
    assert values["emqx/publish"] >= 1
