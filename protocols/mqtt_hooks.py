"""Authentication and authorization hooks for brokers that ask a web service (``/mqtt/...``).

EMQX 5 (HTTP authenticator and HTTP authorizer) and mosquitto-go-auth (HTTP backend) ask the
gateway, on each connection and on each publish, subscription or delivery they check, whether
to let it through. Every answer comes from the same decision as every other broker adapter
(`gateway.mqtt_acl`), built per request from the room policies and grants.

- ``POST /mqtt/emqx/authn``: a JSON body from the operator's template, with ``username`` and
  ``password``; answers ``200 {"result": "allow" | "deny", "is_superuser": false}``.
- ``POST /mqtt/emqx/authz``: ``username``, ``topic`` and ``action`` (``publish`` or
  ``subscribe``); answers ``200 {"result": "allow" | "deny"}``.
- ``POST /mqtt/goauth/user``, ``/superuser``, ``/acl``: go-auth's fields (``username``,
  ``password``, ``clientid``, ``topic``, ``acc``) as JSON or as a form; answers ``200
  {"ok": true, "error": ""}`` or ``403 {"ok": false, "error": ...}``, which both its
  ``status`` and its ``json`` response modes read. There are no superusers.

Every request carries the shared secret ``MQTT_HOOK_TOKEN``, as ``Authorization: Bearer
<token>`` or as the password of HTTP Basic credentials (go-auth cannot set headers, but Go's
HTTP client sends the user part of its URL, ``http_host user:<token>@host``, that way).
Without it the answer is ``401``; with the token unset the hooks do not exist (``404``). Any
answer other than an explicit allow denies: a bad body (``400``, ``413``, ``415``), a failing
decision (answered as a denial, logged and counted), an unreachable gateway.
"""

import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from gateway import metrics
from gateway.access import mqtt_access, mqtt_identity
from gateway.devices import authenticate_device
from gateway.jsonutil import parse_json
from gateway.mqtt_acl import RoomTopics, TopicAction, acl, decide
from protocols.api import Refusal

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
_MAX_FIELDS = 32
_JSON_DEPTH = 4  # a flat object, and room for an operator's template that nests a little

Question = Literal["connect", "superuser", "publish", "subscribe", "receive", "readwrite"]
# go-auth's ``acc``: Mosquitto's MOSQ_ACL_READ (a delivery), WRITE, READ|WRITE, SUBSCRIBE.
_GOAUTH_ACC: dict[str, Question] = {
    "1": "receive",
    "2": "publish",
    "3": "readwrite",
    "4": "subscribe",
}
_EMQX_ACTIONS: dict[str, Question] = {"publish": "publish", "subscribe": "subscribe"}


@dataclass(frozen=True, slots=True)
class Ask:
    """What a broker asks: may ``username`` do ``question`` (with ``password``, on ``topic``)."""

    question: Question
    username: str
    password: str = ""
    topic: str = ""


# The decision (synchronous: it reads the database).


def answer(ask: Ask) -> bool:
    """Whether the broker should let ``ask`` through."""
    if ask.question == "connect":
        return _authenticate(ask.username, ask.password)
    if ask.question == "superuser":
        return False  # the bridge's rights come from its ACL, like everyone's
    if ask.question == "readwrite":
        return _authorize(ask.username, ("receive", "publish"), ask.topic)
    return _authorize(ask.username, (ask.question,), ask.topic)


def _authenticate(username: str, password: str) -> bool:
    identity = mqtt_identity(username, bridge_username=_bridge_username())
    if identity.kind == "bridge":
        expected = settings.MQTT.password if settings.MQTT is not None else None
        # An empty password never authenticates the bridge: it would authenticate anyone.
        return bool(expected) and hmac.compare_digest(_bytes(password), _bytes(expected or ""))
    if identity.kind == "anonymous":
        return _anonymous_mqtt()
    return authenticate_device(username, password) is not None


def _authorize(username: str, actions: tuple[TopicAction, ...], topic: str) -> bool:
    """Whether ``username`` may do every one of ``actions`` on ``topic``."""
    identity = mqtt_identity(username, bridge_username=_bridge_username())
    access = mqtt_access(identity, anonymous_mqtt=_anonymous_mqtt())
    topics: RoomTopics = settings.BRIDGE_RULES
    entries = acl(identity, access, topics)
    return all(
        decide(identity, action, topic, entries, connect=access.connect) for action in actions
    )


def _bridge_username() -> str | None:
    return settings.MQTT.username if settings.MQTT is not None else None


def _anonymous_mqtt() -> bool:
    return settings.MQTT_ANONYMOUS == "public"


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# The request: the shared secret, the body.


def _presented_secret(header: str | None) -> str:
    """The secret of an ``Authorization`` header: a Bearer token or a Basic password."""
    if header is None:
        return ""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        _, colon, password = decoded.partition(":")
        return password if colon else ""
    return ""


def _check_secret(request: HttpRequest, token: str) -> None:
    presented = _presented_secret(request.headers.get("Authorization"))
    if not hmac.compare_digest(_bytes(presented), _bytes(token)):
        raise Refusal(401, "unauthorised", "send the hook token as Authorization: Bearer")


def _fields(request: HttpRequest) -> dict[str, Any]:
    """The body's fields, from JSON or a form, at most `MAX_BODY_BYTES` of it."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise Refusal(400, "invalid_body", "Content-Length is not a number") from exc
    if declared > MAX_BODY_BYTES:
        raise Refusal(413, "too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    data = request.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise Refusal(413, "too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    if request.content_type == "application/json":
        try:
            body = parse_json(data, _JSON_DEPTH)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal(400, "invalid_json", f"the body must be JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise Refusal(400, "invalid_body", "the body must be a JSON object")
        return body
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                data.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                errors="strict",
                max_num_fields=_MAX_FIELDS,
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal(400, "invalid_form", f"the body must be a form: {exc}") from exc
        fields: dict[str, Any] = {}
        for key, value in pairs:
            if key in fields:
                raise Refusal(400, "invalid_form", f"{key[:40]!r} is given twice")
            fields[key] = value
        return fields
    raise Refusal(415, "unsupported_media_type", "send JSON or a form")


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise Refusal(400, "invalid_body", f"{name} must be a string")
    return value


# The two dialects: what each broker sends, and how it reads an answer.


def _emqx_authn(fields: dict[str, Any]) -> Ask:
    return Ask("connect", _text(fields, "username"), password=_text(fields, "password"))


def _emqx_authz(fields: dict[str, Any]) -> Ask:
    question = _EMQX_ACTIONS.get(_text(fields, "action"))
    if question is None:
        raise Refusal(400, "invalid_body", "action must be publish or subscribe")
    return Ask(question, _text(fields, "username"), topic=_text(fields, "topic"))


def _goauth_user(fields: dict[str, Any]) -> Ask:
    return Ask("connect", _text(fields, "username"), password=_text(fields, "password"))


def _goauth_superuser(fields: dict[str, Any]) -> Ask:
    return Ask("superuser", _text(fields, "username"))


def _goauth_acl(fields: dict[str, Any]) -> Ask:
    acc = fields.get("acc")
    # JSON mode sends a number, form mode a string.
    key = str(acc) if isinstance(acc, int) and not isinstance(acc, bool) else acc
    question = _GOAUTH_ACC.get(key) if isinstance(key, str) else None
    if question is None:
        raise Refusal(400, "invalid_body", "acc must be 1, 2, 3 or 4")
    return Ask(question, _text(fields, "username"), topic=_text(fields, "topic"))


def _emqx_reply(*, authn: bool) -> Callable[[bool], HttpResponse]:
    def reply(allowed: bool) -> HttpResponse:
        body: dict[str, Any] = {"result": "allow" if allowed else "deny"}
        if authn:
            body["is_superuser"] = False
        return JsonResponse(body)

    return reply


def _goauth_reply(allowed: bool) -> HttpResponse:
    if allowed:
        return JsonResponse({"ok": True, "error": ""})
    return JsonResponse({"ok": False, "error": "denied"}, status=403)


# The views.

View = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponse]]


def _hook(
    endpoint: str,
    parse: Callable[[dict[str, Any]], Ask],
    reply: Callable[[bool], HttpResponse],
) -> View:
    """A hook view: the secret, the body, then the decision. Whatever fails denies."""
    broker = endpoint.split("_", 1)[0]

    async def view(request: HttpRequest) -> HttpResponse:
        token = settings.MQTT_HOOK_TOKEN
        if not token:
            return Refusal(404, "not_found", "the MQTT hooks are not enabled").response()
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            _check_secret(request, token)
            ask = parse(_fields(request))
            allowed: bool = await database_sync_to_async(answer)(ask)
        except Refusal as refusal:
            metrics.inc("mqtt_hook_refused", refusal.code)
            return refusal.response()
        except Exception:
            logger.exception("MQTT hook %s failed; answered with a denial", endpoint)
            metrics.inc("mqtt_hook_errors", endpoint)
            return reply(False)
        if not allowed and ask.question != "superuser":  # go-auth asks it before every check
            metrics.inc("mqtt_hook_denied", f"{broker}/{ask.question}")
        return reply(allowed)

    view.__name__ = view.__qualname__ = endpoint
    # Broker-to-gateway calls with their own secret: no cookie, so nothing to forge.
    return csrf_exempt(never_cache(view))


emqx_authn = _hook("emqx_authn", _emqx_authn, _emqx_reply(authn=True))
emqx_authz = _hook("emqx_authz", _emqx_authz, _emqx_reply(authn=False))
goauth_user = _hook("goauth_user", _goauth_user, _goauth_reply)
goauth_superuser = _hook("goauth_superuser", _goauth_superuser, _goauth_reply)
goauth_acl = _hook("goauth_acl", _goauth_acl, _goauth_reply)
