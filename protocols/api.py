"""The HTTP API: post into rooms, read their history and presence, list them.

Programs authenticate with ``Authorization: Bearer <token>`` (tokens are managed in Django's
admin or with ``manage.py issue_token``); reading a public room needs no token. Every error is
a JSON object ``{"error": <code>, "detail": <text>}`` with the matching status. The schema is
served at ``/api/openapi.json``.
"""

import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from redis.exceptions import RedisError

from gateway import metrics
from gateway.access import aaccess_for, can_read, can_write, visible_rooms
from gateway.conf import gateway_settings
from gateway.errors import GatewayError
from gateway.history import WINDOW, history_for, parse_since
from gateway.jsonutil import MESSAGE_MAX_DEPTH, dumps_bytes, parse_json
from gateway.models import Message, Room
from gateway.presence import presence_for
from gateway.publish import publish
from gateway.ratelimit import BucketsByKey, RateLimit
from gateway.rooms import is_valid_room
from protocols.auth import bearer_user
from protocols.client_address import request_address
from protocols.frames import read_page
from protocols.openapi import SCHEMA

logger = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
ANSWER_BYTES = 1 << 20  # an answer's messages at most (the first always; ``more`` says so)


class Refusal(Exception):
    """An answer other than success: its status, error code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def response(self) -> JsonResponse:
        return JsonResponse({"error": self.code, "detail": self.detail}, status=self.status)


def answers_refusals(
    view: Callable[..., Coroutine[Any, Any, HttpResponse]],
) -> Callable[..., Coroutine[Any, Any, HttpResponse]]:
    """Turn a `Refusal` raised by ``view`` into its JSON error response, and a Redis (or Redis
    shard) that cannot be reached into ``503 unavailable``."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except Refusal as refusal:
            return refusal.response()
        except RedisError as exc:
            logger.warning("%s: Redis unreachable: %s: %s", request.path, type(exc).__name__, exc)
            detail = "the room's Redis cannot be reached now; try again shortly"
            return Refusal(503, "unavailable", detail).response()

    return wrapper


async def _caller(request: HttpRequest) -> tuple[Any, bool]:
    """The user behind a request, and whether a token was given; an anonymous caller past its
    address's rate is refused."""
    if "Authorization" not in request.headers:
        user = await request.auser()
        if not user.is_authenticated:
            _throttle_anonymous(request)
        return user, False
    found = await sync_to_async(bearer_user)(request)
    if found is None:
        raise Refusal(401, "unauthorised", "invalid or revoked token")
    return found[1], True


_anonymous_reads: BucketsByKey | None = None


def _throttle_anonymous(request: HttpRequest) -> None:
    global _anonymous_reads  # noqa: PLW0603 - one set of buckets per process
    if _anonymous_reads is None:
        limit = RateLimit(rate=settings.API_ANONYMOUS_RATE, burst=settings.API_ANONYMOUS_BURST)
        _anonymous_reads = BucketsByKey(limit)
    if not _anonymous_reads.take(request_address(request, settings.TRUSTED_PROXIES)):
        metrics.inc("api_throttled")
        raise Refusal(429, "rate_limited", "too many requests without a token: slow down")


def _valid_room(room: str) -> None:
    if not is_valid_room(room):
        raise Refusal(400, "invalid_room", f"{room[:80]!r} is not a room name")


async def _readable_room(request: HttpRequest, room: str) -> None:
    """Refuse unless the caller may read ``room`` and it exists."""
    _valid_room(room)
    user, _ = await _caller(request)
    # A room the caller may not read answers as one that does not exist: no probing for
    # private rooms.
    if not can_read(await aaccess_for(user, room)):
        raise _unknown(room)
    if not await Room.objects.filter(name=room).aexists():
        raise _unknown(room)


def _unknown(room: str) -> Refusal:
    return Refusal(404, "unknown_room", f"no room {room} with messages that you may read")


def _body_message(request: HttpRequest) -> Any:
    """The ``message`` of a JSON request body."""
    if request.content_type != "application/json":
        raise Refusal(415, "unsupported_media_type", "send application/json")
    limit = gateway_settings().max_frame_bytes
    if len(request.body) > limit:
        raise Refusal(413, "too_large", f"bodies are limited to {limit} bytes")
    try:
        body = parse_json(request.body, MESSAGE_MAX_DEPTH + 1)  # the body holds the message
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(400, "invalid_json", f"the body must be JSON: {exc}") from exc
    if not isinstance(body, dict) or "message" not in body:
        raise Refusal(400, "invalid_body", 'send {"message": <any JSON value>}')
    return body["message"]


@csrf_exempt  # token-authenticated: no cookie, so nothing to forge
@require_http_methods(["GET", "POST"])
@answers_refusals
async def messages(request: HttpRequest, room: str) -> HttpResponse:
    """``GET``: a room's messages after ``since``; ``POST``: put a message into the room."""
    if request.method == "POST":
        return await _post_message(request, room)
    await _readable_room(request, room)
    try:
        since = parse_since(request.GET.get("since", "0"))
    except ValueError as exc:
        raise Refusal(400, "invalid_query", str(exc)) from exc
    text = request.GET.get("limit", "100")
    limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0
    if not 1 <= limit <= WINDOW:
        raise Refusal(400, "invalid_query", f"limit must be a whole number 1-{WINDOW}")
    page = await history_for().missed(room, since, limit, page=True)
    messages, more = _within(page.messages, ANSWER_BYTES)
    return JsonResponse(
        {"room": room, "gap": page.gap, "more": page.more or more, "messages": messages}
    )


def _within(messages: list[Any], limit: int) -> tuple[list[Any], bool]:
    """The first of ``messages`` whose JSON fits ``limit`` bytes (the first always), and
    whether any were left out."""
    total = 0
    for count, message in enumerate(messages):
        total += len(dumps_bytes(message)) + 1
        if total > limit and count > 0:
            return messages[:count], True
    return messages, False


async def _post_message(request: HttpRequest, room: str) -> HttpResponse:
    _valid_room(room)
    user, with_token = await _caller(request)
    if not with_token:
        raise Refusal(401, "unauthorised", "posting needs an Authorization: Bearer token")
    message = _body_message(request)
    access = await aaccess_for(user, room)
    if not can_read(access):
        raise _unknown(room)
    if not can_write(access):
        raise Refusal(403, "forbidden", f"you may read room {room} but not write to it")
    try:
        envelope = await publish(room, message, source="http", sender=str(user.get_username()))
    except GatewayError as exc:
        raise Refusal(exc.status, exc.code, str(exc)) from exc
    except (RedisError, DatabaseError) as exc:
        metrics.dropped("store_unavailable", f"room {room}: {type(exc).__name__}: {exc}")
        raise Refusal(503, "unavailable", "the gateway cannot keep messages now") from exc
    return JsonResponse({k: v for k, v in envelope.items() if k != "gateway"}, status=201)


@require_GET
@answers_refusals
async def presence(request: HttpRequest, room: str) -> HttpResponse:
    """Who is in a room now."""
    await _readable_room(request, room)
    try:
        cursor, limit = read_page(request.GET.get("cursor"), request.GET.get("limit"))
    except ValueError as exc:
        raise Refusal(400, "invalid_query", str(exc)) from exc
    members, following, count = await presence_for().page(room, cursor, limit)
    return JsonResponse({"room": room, "presence": members, "count": count, "cursor": following})


@require_GET
@answers_refusals
async def rooms(request: HttpRequest) -> HttpResponse:
    """The rooms the caller may read."""
    user, _ = await _caller(request)
    names, rates = await database_sync_to_async(_rooms_and_rates)(user)
    presence = presence_for()
    listed = []
    for name in names:
        kinds = [m["kind"] for m in await presence.members(name)]
        listed.append(
            {
                "name": name,
                "people": kinds.count("browser"),
                "devices": kinds.count("device"),
                "messages_per_minute": rates.get(name, 0),
            }
        )
    return JsonResponse({"rooms": listed})


def _rooms_and_rates(user: Any) -> tuple[list[str], dict[str, int]]:
    """The rooms ``user`` may read (at most 200), and their messages in the last minute."""
    names = list(visible_rooms(user).order_by("name").values_list("name", flat=True)[:200])
    recent = Message.objects.filter(room__in=names, created_at__gte=timezone.now() - MINUTE)
    rates = {row["room"]: row["n"] for row in recent.values("room").annotate(n=Count("id"))}
    return names, rates


@require_GET
def openapi(request: HttpRequest) -> HttpResponse:
    """The API's OpenAPI document."""
    return JsonResponse(SCHEMA)


async def not_found(request: HttpRequest) -> HttpResponse:
    """Any other path under ``/api/``: a JSON 404, like every API error."""
    return Refusal(404, "not_found", f"no API endpoint at {request.path[:200]}").response()
