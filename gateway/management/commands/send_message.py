"""``manage.py send_message <room> <text-or-json>``: put a message into a room from the shell."""

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.errors import GatewayError
from gateway.jsonutil import MESSAGE_MAX_DEPTH, parse_json
from gateway.publish import publish


class Command(BaseCommand):
    help = (
        "Sends a message into a room; browsers and the room's MQTT topic receive it. The "
        "message is parsed as JSON when it is JSON, and sent as text otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room", help="the room's name")
        parser.add_argument("message", help="text, or JSON such as '{\"on\": true}'")
        parser.add_argument("--sender", default="admin", help="who the message is from")
        parser.add_argument("--text", action="store_true", help="send as text, even if JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            raise CommandError(
                "REDIS_URL is not set: send_message reaches running gateways through a shared "
                "channel layer, e.g. REDIS_URL=redis://localhost:6379/0"
            )
        text: str = options["message"]
        message: Any = text
        if not options["text"]:
            try:
                message = parse_json(text, MESSAGE_MAX_DEPTH)
            except ValueError:
                message = text
        try:
            envelope = async_to_sync(publish)(
                options["room"], message, source="http", sender=options["sender"], layer=layer
            )
        except GatewayError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"sent {envelope['id']} to room {envelope['room']}")
