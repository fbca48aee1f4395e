"""The ``mqtt-bridge`` channel consumer: room messages on their way to the broker."""

import logging

from channels.consumer import AsyncConsumer

from bridges.runtime import current_bridge
from gateway import metrics
from gateway.dispatch import DirectDispatchMixin
from gateway.events import MqttPublishEvent

logger = logging.getLogger(__name__)


class MqttBridgeConsumer(DirectDispatchMixin, AsyncConsumer):  # type: ignore[misc]
    """Publishes each ``mqtt.publish`` event through the bridge this process runs."""

    async def mqtt_publish(self, event: MqttPublishEvent) -> None:
        bridge = current_bridge()
        if bridge is None:
            metrics.dropped("bridge_not_running", f"room {event['envelope']['room']}")
            return
        try:
            await bridge.publish_envelope(
                event["envelope"], event.get("reply_channel"), event.get("reply_to")
            )
        except Exception:
            # A consumer that raised would be restarted with its queued events lost.
            metrics.dropped("mqtt_publish_failed", f"room {event['envelope']['room']}")
            logger.exception("publishing to the broker failed")
