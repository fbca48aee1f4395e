"""When the bridge acknowledges a message to the broker: only once it is handed on or counted."""

import asyncio

import pytest

from bridges.client import Incoming, MqttLink, RedeliverError
from bridges.conf import MqttSettings
from gateway import metrics


def message(mid: int) -> Incoming:
    return Incoming(
        topic="rooms/a/b",
        payload=b"{}",
        qos=1,
        mid=mid,
        retain=False,
        snapshot=False,
        origin=None,
        content_type=None,
    )


@pytest.mark.parametrize(
    ("outcome", "acked", "dropped"),
    [("handed_on", True, 0), ("failed", True, 1), ("redeliver", False, 0)],
)
async def test_a_message_is_acknowledged_only_when_handed_on_or_counted(
    outcome: str, acked: bool, dropped: int
) -> None:
    async def handler(_batch: list[Incoming]) -> None:
        if outcome == "failed":
            raise ValueError("a bug")
        if outcome == "redeliver":
            raise RedeliverError("redis is down and the bridge is stopping")

    settings = MqttSettings(host="127.0.0.1", port=1, client_id="ack-test")
    link = MqttLink(settings, filters=[("rooms/#", 1)], handler=handler, origin="gw")
    acks: list[tuple[int, int]] = []
    link._acknowledge = lambda batch: acks.extend((m.mid, m.qos) for m in batch)  # type: ignore[method-assign]
    before = metrics.get("messages_dropped", "handler_error")
    consumer = asyncio.create_task(link._consume())
    link._inbox.append(message(7))  # as a read of the connection leaves it
    link._idle.clear()
    link._arrived.set()
    await asyncio.wait_for(link._idle.wait(), 5)
    consumer.cancel()
    assert acks == ([(7, 1)] if acked else [])
    assert metrics.get("messages_dropped", "handler_error") == before + dropped
