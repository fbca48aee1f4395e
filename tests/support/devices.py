"""A device as a real one behaves: paho-mqtt with a persistent session, publishing in sequence."""

import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Device:
    """An MQTT 5 client that keeps unacknowledged QoS 1 messages across broker restarts."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.port = port
        self.published = 0
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish

    def _on_publish(self, *_args: Any) -> None:
        with self._lock:
            self.acked += 1

    def __enter__(self) -> "Device":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=properties)
        self.client.loop_start()
        return self

    def __exit__(self, *_exc: object) -> None:
        # Like a device that finishes its sends before it hangs up.
        self.wait_acked(self.published, timeout=10)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish; ``message_id`` names the message (the ``message-id`` user property)."""
        properties = None
        if content_type or message_id:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if content_type:
            properties.ContentType = content_type
        if message_id:
            properties.UserProperty = [("message-id", message_id)]
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self.published += 1

    def publish_sequence(self, topic: str, count: int, rate: float, start: int = 0) -> None:
        """``count`` JSON messages ``{"seq": n}`` at ``rate`` per second (blocking)."""
        began = time.monotonic()
        for n in range(start, start + count):
            self.publish(topic, json.dumps({"seq": n, "sent": time.time()}).encode())
            delay = began + (n - start + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def unacknowledged(self) -> int:
        """Messages sent and not yet acknowledged by the broker: what the device sends again
        if its link drops now."""
        with self._lock:
            return self.published - self.acked

    def wait_acked(self, count: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.acked >= count:
                    return True
            time.sleep(0.05)
        return False
