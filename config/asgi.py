"""The ASGI application: HTTP, WebSocket and channel-layer workers, composed in one place."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()  # before anything that imports models

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from bridges.consumer import MqttBridgeConsumer  # noqa: E402
from gateway.events import BRIDGE_CHANNEL  # noqa: E402
from protocols.admission import HandshakeAdmission  # noqa: E402
from protocols.auth import TokenAuthMiddleware, session_auth  # noqa: E402
from protocols.flatten import Flattened  # noqa: E402
from protocols.origin import OriginOrBearerValidator  # noqa: E402
from protocols.routing import websocket_urlpatterns  # noqa: E402

# Flattened, around everything: the layers resolve a socket's scope and return (the protocol
# router among them), then the socket is left to its consumer alone.
application = Flattened(
    ProtocolTypeRouter(
        {
            # Static files are served by the gateway itself so a fresh install works offline.
            "http": ASGIStaticFilesHandler(django_asgi_app),
            # HandshakeAdmission first: a busy process answers before any other layer works.
            "websocket": HandshakeAdmission(
                OriginOrBearerValidator(
                    session_auth(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
                )
            ),
            "channel": ChannelNameRouter({BRIDGE_CHANNEL: MqttBridgeConsumer.as_asgi()}),
        }
    )
)

# What is built by now (modules, classes, settings, the application) lives as long as the
# process: moved out of the collector's way, a full collection walks only what came since.
gc.collect()
gc.freeze()
