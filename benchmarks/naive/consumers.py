"""The tutorial's chat consumer: join the room's group, echo what is said to the whole group.

One addition for the uplink: what a browser says is also handed to the bridge's channel, which
publishes it to the room's MQTT topic.
"""

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

UPLINK_CHANNEL = "mqtt-uplink"


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat_{self.room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = json.loads(text_data or "{}").get("message")
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": message}
        )
        await self.channel_layer.send(
            UPLINK_CHANNEL, {"type": "mqtt.publish", "room": self.room, "message": message}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"message": event["message"]}))
