"""The ``mqtt-bridge`` channel consumer: room messages on their way to the broker."""

import logging

from channels.consumer import AsyncConsumer

from bridges.runtime import current_bridge
from gateway import metrics
from gateway.conf import gateway_settings
from gateway.dispatch import DirectDispatchMixin
from gateway.events import MqttPublishEvent
from gateway.layers import every_reader_gets_each_message, redis_connection

CLAIM_SECONDS = 3600  # how long a worker's claim on an outbound message is remembered

logger = logging.getLogger(__name__)


class MqttBridgeConsumer(DirectDispatchMixin, AsyncConsumer):  # type: ignore[misc]
    """Publishes each ``mqtt.publish`` event through the bridge this process runs."""

    async def mqtt_publish(self, event: MqttPublishEvent) -> None:
        bridge = current_bridge()
        if bridge is None:
            metrics.dropped("bridge_not_running", f"room {event['envelope']['room']}")
            return
        if not await self._claim(event["envelope"]["id"]):
            metrics.inc("duplicates_removed", "outbound_copy")  # another worker publishes it
            return
        try:
            await bridge.publish_envelope(
                event["envelope"], event.get("reply_channel"), event.get("reply_to")
            )
        except Exception:
            # A consumer that raised would be restarted with its queued events lost.
            metrics.dropped("mqtt_publish_failed", f"room {event['envelope']['room']}")
            logger.exception("publishing to the broker failed")

    async def _claim(self, message_id: str) -> bool:
        """Whether this worker publishes the message: with the pub/sub layer every worker
        gets every event, so the first to claim it in Redis publishes it."""
        if not every_reader_gets_each_message(self.channel_layer):
            return True
        key = f"gateway:{gateway_settings().gateway_id}:outbound:{message_id}"
        claimed = await redis_connection(self.channel_layer).set(key, 1, nx=True, ex=CLAIM_SECONDS)
        return bool(claimed)
