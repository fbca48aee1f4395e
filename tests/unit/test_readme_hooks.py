"""The README's broker configurations for the HTTP hooks: they parse, fail closed, and name
the gateway's real endpoints."""

import re
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.urls import Resolver404, resolve
from pyhocon import ConfigFactory, ConfigTree

from protocols import mqtt_hooks

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### Brokers that ask the gateway (HTTP hooks)"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(HEADING)
    end = text.find("\n## ", start)
    return text[start : end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section(), flags=re.DOTALL | re.MULTILINE)


def view_at(url: str) -> object:
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https"), url
    assert not parts.query, url
    try:
        return resolve(parts.path).func
    except Resolver404:
        pytest.fail(f"{url} is not a route of the gateway")


@pytest.fixture(scope="module")
def emqx() -> ConfigTree:
    found = blocks("hocon")
    assert len(found) == 1, "the section shows one EMQX configuration, tagged hocon"
    return ConfigFactory.parse_string(found[0])


def assert_sends_the_token(source: ConfigTree) -> None:
    assert source["method"] == "post"
    headers = source["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["authorization"].startswith("Bearer ")


def test_emqx_authentication_asks_the_authn_hook(emqx: ConfigTree) -> None:
    (authenticator,) = emqx["authentication"]  # the last authenticator: ignore means refuse
    assert authenticator["mechanism"] == "password_based"
    assert authenticator["backend"] == "http"
    assert view_at(authenticator["url"]) is mqtt_hooks.emqx_authn
    assert_sends_the_token(authenticator)
    body = authenticator["body"]
    assert body["username"] == "${username}"
    assert body["password"] == "${password}"


def test_emqx_authorization_denies_unless_the_authz_hook_allows(emqx: ConfigTree) -> None:
    authorization = emqx["authorization"]
    assert authorization["no_match"] == "deny"
    (source,) = authorization["sources"]  # the default file source is gone
    assert source["type"] == "http"
    assert view_at(source["url"]) is mqtt_hooks.emqx_authz
    assert_sends_the_token(source)
    body = source["body"]
    assert body["username"] == "${username}"
    assert body["topic"] == "${topic}"
    assert body["action"] == "${action}"
    cache = authorization.get("cache", ConfigTree())
    if cache.get("enable", True):
        # A short one: revocations must not wait long. (pyhocon reads a duration as a
        # timedelta, or a relativedelta when python-dateutil is installed.)
        start = datetime(2000, 1, 1)
        ttl = (start + cache["ttl"] - start).total_seconds()
        assert 0 < ttl <= 60, cache["ttl"]


def test_go_auth_asks_the_goauth_hooks() -> None:
    (block,) = blocks("conf")
    options = dict(
        line.split(None, 1) for line in block.splitlines() if line.startswith("auth_opt")
    )
    assert options["auth_opt_backends"] == "http"
    assert view_at(f"http://web{options['auth_opt_http_getuser_uri']}") is mqtt_hooks.goauth_user
    assert view_at(f"http://web{options['auth_opt_http_aclcheck_uri']}") is mqtt_hooks.goauth_acl
    if "auth_opt_http_superuser_uri" in options:
        uri = options["auth_opt_http_superuser_uri"]
        assert view_at(f"http://web{uri}") is mqtt_hooks.goauth_superuser
    # The token rides as Basic credentials: the user part of the host.
    assert re.fullmatch(r"[^:@/]+:<MQTT_HOOK_TOKEN>@[^:@/]+", options["auth_opt_http_host"])
    assert options.get("auth_opt_http_params_mode", "json") in ("json", "form")
    assert options.get("auth_opt_http_response_mode", "status") in ("status", "json")
    assert options.get("auth_opt_http_method", "POST") == "POST"
