"""Pages: the index (rooms) and a room's live page."""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from gateway.access import visible_rooms
from gateway.rooms import ROOM_PATTERN, is_valid_room


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
    """A room's live page."""
    if not is_valid_room(room):
        raise Http404("no such room")
    return render(request, "protocols/room.html", {"room": room})
