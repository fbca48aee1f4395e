"""Channel-layer events, typed so that a misspelt key is a type error rather than a lost message.

Every event the gateway sends has a fixed ``type`` chosen here; nothing a client sends is ever
copied into ``type`` (a worker exits on an event without one, and a forged one would call an
arbitrary handler).
"""

from typing import Literal, NotRequired, TypedDict

from gateway.envelope import Envelope

MQTT_PUBLISH: Literal["mqtt.publish"] = "mqtt.publish"

# The channel the MQTT bridge worker (``runworker mqtt-bridge``) reads.
BRIDGE_CHANNEL = "mqtt-bridge"


class MqttPublishEvent(TypedDict):
    """Sent to `BRIDGE_CHANNEL`; the bridge publishes the envelope to the room's topic."""

    type: Literal["mqtt.publish"]
    envelope: Envelope
    reply_channel: NotRequired[str]  # the hub told if the message cannot reach the broker
    reply_to: NotRequired[str]  # which of the reply channel's sockets sent it
