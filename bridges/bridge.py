"""The MQTT bridge: device messages into rooms, room messages out to the broker.

Inbound, a message on ``rooms/<room>[/...]`` is decoded and enters the room through
`gateway.publish.publish` with ``source="mqtt"`` (which never sends it back to the bridge).
Outbound, an envelope from the ``mqtt-bridge`` channel goes to ``rooms/<room>/gateway``. The
bridge's own publications come back on its subscription only where No Local is unavailable
(MQTT 3.1.1, shared subscriptions); they carry this gateway's id and are skipped.
"""

import logging
from typing import Any

import paho.mqtt.client as paho

from bridges.client import MqttLink
from bridges.codecs import Codec, get_codec
from bridges.conf import MqttSettings
from bridges.topics import INBOUND_FILTER, outbound_topic, route_inbound
from gateway import metrics
from gateway.envelope import Envelope
from gateway.errors import GatewayError
from gateway.jsonutil import dumps, parse_json
from gateway.publish import publish

logger = logging.getLogger(__name__)

INBOUND_QOS = 1
OUTBOUND_QOS = 1


class Bridge:
    """Bridges the default topics to rooms in both directions."""

    def __init__(self, settings: MqttSettings, *, gateway_id: str, codec: str = "json") -> None:
        self.gateway_id = gateway_id
        self.codec: Codec = get_codec(codec)
        self.link = MqttLink(
            settings, subscriptions=[(INBOUND_FILTER, INBOUND_QOS)], handler=self.handle_inbound
        )

    async def start(self) -> None:
        """Connect to the broker (retrying in the background) and start bridging."""
        logger.info("bridge %s connecting to %s", self.gateway_id, self.link.settings.describe())
        await self.link.start()

    async def stop(self) -> None:
        """Disconnect from the broker."""
        await self.link.stop()

    async def handle_inbound(self, message: paho.MQTTMessage) -> None:
        """Deliver one device message to its room, or count why not."""
        topic = message.topic
        route = route_inbound(topic)
        if route is None:
            metrics.dropped("no_room", f"topic {topic!r} names no valid room")
            return
        payload = bytes(message.payload)
        if topic == outbound_topic(route.room) and self._is_own(payload):
            metrics.inc("mqtt_own_publications_skipped")
            return
        decoded = self.codec.decode(payload)
        try:
            await publish(
                route.room,
                decoded.message,
                source="mqtt",
                sender=route.sender,
                topic=topic,
                base64=decoded.base64,
            )
        except GatewayError as exc:
            metrics.dropped(exc.code, f"topic {topic!r}: {exc}")
            return
        metrics.inc("mqtt_messages_in")

    def _is_own(self, payload: bytes) -> bool:
        try:
            envelope: Any = parse_json(payload)
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(envelope, dict) and envelope.get("gateway") == self.gateway_id

    async def publish_envelope(self, envelope: Envelope) -> None:
        """Publish a room message to the room's outbound topic."""
        topic = outbound_topic(envelope["room"])
        info = self.link.publish(topic, dumps(envelope).encode("utf-8"), qos=OUTBOUND_QOS)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            metrics.dropped("mqtt_publish_failed", f"{topic}: {paho.error_string(info.rc)}")
            return
        metrics.inc("mqtt_messages_out")
