"""The Origin check, where it protects something.

Browsers send cookies with every WebSocket handshake, so a page on another site could open a
socket in its visitor's session: `AllowedHostsOriginValidator` refuses foreign origins for that.
A client that authenticates with an ``Authorization: Bearer`` header is not riding on a cookie
(and browsers cannot set that header), so it may come without an Origin, as programs do.
"""

from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator

from protocols.auth import ASGIApp, Receive, Scope, Send


class OriginOrBearerValidator:
    """`AllowedHostsOriginValidator`, except for Origin-less clients with a bearer token."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner
        self.checked: Any = AllowedHostsOriginValidator(inner)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        bearer = headers.get(b"authorization", b"").lower().startswith(b"bearer ")
        if bearer and b"origin" not in headers:
            await self.inner(scope, receive, send)
        else:
            await self.checked(scope, receive, send)
