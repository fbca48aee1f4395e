"""Pages: the index (rooms), a room's live page, and the page for rooms and paths refused."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from gateway.access import access_for, can_read, is_known, visible_rooms
from gateway.rooms import ROOM_PATTERN, is_valid_room

ROOM_NAME_RULE = (
    "A room name is 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-'."
)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """Rooms the visitor may read, and a form to enter any room (``?room=`` redirects to it)."""
    wanted = request.GET.get("room", "").strip()
    error = None
    if wanted:
        if is_valid_room(wanted):
            return redirect("room", room=wanted)
        error = f"{wanted[:80]!r} is not a room name"
    rooms = visible_rooms(request.user).order_by("name")[:500]
    context = {"rooms": rooms, "room_pattern": ROOM_PATTERN, "error": error}
    return render(request, "protocols/index.html", context, status=400 if error else 200)


@require_GET
def room(request: HttpRequest, room: str) -> HttpResponse:
    """A room's live page; 404 for a name no room can have, 403 for a room the visitor may not
    read (the page would only be refused on its WebSocket)."""
    if not is_valid_room(room):
        return refused(
            request,
            status=404,
            heading="No such room",
            detail=f"{room[:80]!r} is not a room name.",
            hint=ROOM_NAME_RULE,
        )
    if not can_read(access_for(request.user, room)):
        signed_in = is_known(request.user)
        return refused(
            request,
            status=403,
            heading="No access to this room",
            detail=f"You may not read room {room}.",
            hint=None if signed_in else "Log in: it may be open to you.",
            offer_login=not signed_in,
        )
    return render(request, "protocols/room.html", {"room": room})


def refused(
    request: HttpRequest,
    *,
    status: int,
    heading: str,
    detail: str,
    hint: str | None = None,
    offer_login: bool = False,
) -> HttpResponse:
    """The gateway's page for what it refuses or cannot find, with a way back to the index."""
    context = {"heading": heading, "detail": detail, "hint": hint, "offer_login": offer_login}
    return render(request, "protocols/refused.html", context, status=status)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: any path the gateway does not serve, in the gateway's style."""
    return refused(
        request, status=404, heading="Not found", detail="The gateway has no page at this address."
    )
