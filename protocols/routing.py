"""WebSocket routes."""

from django.urls import re_path

from protocols.consumers.room import RefuseConsumer, RoomConsumer
from protocols.flatten import deferred

websocket_urlpatterns = [
    # Any single path segment reaches the consumer, which validates it and refuses bad names.
    re_path(r"^ws/rooms/(?P<room>[^/]+)/\Z", deferred(RoomConsumer.as_asgi())),
    re_path(r"", deferred(RefuseConsumer.as_asgi())),
]
