"""Event dispatch without a database round trip per event, and without a task per socket.

Channels' consumers call ``close_old_connections()`` in a worker thread before every event they
handle, so each message a socket receives costs a thread hop. The gateway's consumers reach the
database only through ``database_sync_to_async``, which does that cleanup itself, so the hop buys
nothing on the hot path; measured, it was a third of daphne's time per delivered message.

A consumer with no channel of its own has one source of events, so it awaits it directly:
Channels' loop wraps every source in a task and waits on the set, which holds a task and its
waiter for each idle socket.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer


class DirectDispatchMixin:
    """Dispatches each event straight to its handler (``room.message`` -> ``room_message``)."""

    channel_layer_alias: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every attribute is set as the consumer is made, not first in `__call__`: CPython
        # shares one attribute table among a class's instances only for the names it learns
        # while the first few are made. A name first set later, after a burst of handshakes
        # has made dozens at once, gives every later socket a whole dict of its own.
        self.scope: dict[str, Any] = {}
        self.channel_layer: Any = None
        self.base_send: Any = None  # ASGI send, once called

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if get_channel_layer(self.channel_layer_alias) is not None:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
            return
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        del scope  # the consumer may keep less of it once the socket is open
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' own, without its ``close_old_connections()`` thread hop (see above): a
        burst of closing sockets would queue one each on the database's one thread, ahead of
        the handshakes that need it."""
        if getattr(self, "groups", None):  # groups to leave: Channels' own does that
            await super().websocket_disconnect(message)  # type: ignore[misc]
            return
        await self.disconnect(message.get("code", 1006))  # type: ignore[attr-defined]
        raise StopConsumer

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
