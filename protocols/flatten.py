"""Middleware that resolves a socket's scope, then steps out of the way.

An ASGI middleware stack runs as nested coroutines: each layer copies the scope and awaits the
layer below it for as long as the connection lasts. For a WebSocket that is the socket's whole
life, and each idle socket would hold every layer's frame and copy of the scope (about 5 KB
with the Origin check, cookies, session, auth, token and URL routing). None of those layers
does anything after the inner application returns, so `Flattened` runs the stack only until it
reaches an application wrapped with `deferred`, and then runs that application itself, once
the layers above it have returned. It wraps the protocol router too, so that no layer's frame
holds daphne's scope; and a Channels consumer (``as_asgi()``) is made and run directly.
"""

from contextvars import ContextVar
from typing import Any

from protocols.auth import ASGIApp, Receive, Scope, Send

_Call = tuple[ASGIApp, Scope, Receive, Send]
_pending: ContextVar[list[_Call] | None] = ContextVar("gateway_deferred_app", default=None)


def deferred(app: ASGIApp) -> Any:
    """``app``, to be run by the enclosing `Flattened` once the layers above it have returned.

    Outside a `Flattened` stack it runs where it is called. (Typed ``Any`` for Django's
    ``re_path``, which expects a view.)
    """

    async def run_later(scope: Scope, receive: Receive, send: Send) -> None:
        pending = _pending.get()
        if pending is None:
            await app(scope, receive, send)
        else:
            pending.append((app, scope, receive, send))

    run_later.__dict__.update(getattr(app, "__dict__", {}))  # consumer_class, for introspection
    return run_later


def runs_later() -> bool:
    """Whether the enclosing `Flattened` stack has reached its `deferred` application (which
    then runs once the layers have returned)."""
    return bool(_pending.get())


class Flattened:
    """Runs ``stack`` to resolve the scope, then the `deferred` application it reached."""

    def __init__(self, stack: ASGIApp) -> None:
        self.stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pending: list[_Call] = []
        token = _pending.set(pending)
        try:
            await self.stack(scope, receive, send)
        finally:
            _pending.reset(token)
        del scope, receive, send  # the layers' copies are all this connection needs
        if pending:
            app, scope, receive, send = pending.pop()
            consumer_class = getattr(app, "consumer_class", None)
            if consumer_class is not None:  # Channels' as_asgi(): made here, one frame fewer
                app = consumer_class(**getattr(app, "consumer_initkwargs", {}))
            running = app(scope, receive, send)
            del app, scope  # the application holds what it keeps, for as long as it keeps it
            await running
