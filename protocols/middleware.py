"""HTTP middleware of the gateway's own: a Content-Security-Policy, and a throttle on logins."""

import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from gateway import metrics
from protocols.client_address import request_address

# The pages load their scripts, styles and images from the gateway itself and talk to it over
# WebSocket; nothing inline, nothing from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
LOGIN_PATHS = ("/accounts/login/", "/admin/login/")
LOGIN_ATTEMPTS = 10  # per client address and window, per process
LOGIN_WINDOW_SECONDS = 60.0
ADDRESSES_KEPT = 10_000

Handler = Callable[[HttpRequest], Any]


class _Middleware:
    """Runs in the sync or the async chain, whichever Django gives it."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        refused = self.refuse(request)
        if self.is_async:
            return self._acall(request, refused)
        response = refused or self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request: HttpRequest, refused: HttpResponse | None) -> HttpResponse:
        response = refused
        if response is None:
            pending: Awaitable[HttpResponse] = self.get_response(request)
            response = await pending
        return self.after(request, response)

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class ContentSecurityPolicyMiddleware(_Middleware):
    """`CONTENT_SECURITY_POLICY` on the gateway's pages (the admin keeps Django's own ways)."""

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        html = response.get("Content-Type", "").startswith("text/html")
        if html and not request.path.startswith("/admin/"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class LoginThrottleMiddleware(_Middleware):
    """At most `LOGIN_ATTEMPTS` login attempts per client address a minute; then 429."""

    def __init__(self, get_response: Handler) -> None:
        super().__init__(get_response)
        self.attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        if request.method != "POST" or request.path not in LOGIN_PATHS:
            return None
        address = request_address(request, settings.TRUSTED_PROXIES)
        now = time.monotonic()
        recent = self.attempts.pop(address, None) or deque()
        while recent and now - recent[0] > LOGIN_WINDOW_SECONDS:
            recent.popleft()
        self.attempts[address] = recent  # most recent last
        if len(self.attempts) > ADDRESSES_KEPT:
            self.attempts.popitem(last=False)
        if len(recent) >= LOGIN_ATTEMPTS:
            metrics.inc("logins_throttled")
            response = JsonResponse(
                {"error": "too_many_logins", "detail": "too many login attempts: wait a minute"},
                status=429,
            )
            response["Retry-After"] = str(int(LOGIN_WINDOW_SECONDS))
            return response
        recent.append(now)
        return None
