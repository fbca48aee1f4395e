"""The one path every message takes into a room, whatever edge it came from.

`publish_many` validates each message's room, stamps its envelope (id, time, gateway), records
the room, appends the envelopes to the history (which gives each its ``seq``), delivers them to
their rooms and, unless they came from MQTT, to the bridge worker. Messages from MQTT are
never sent back to the bridge: that is the first half of loop prevention (the bridge ignores its
own publications for the second). `publish` is the same path for one message.

Messages that enter together (a burst from the broker) travel together (`gateway.transport`).
With Redis, one script appends the burst to history and delivers it to every process with
sockets in its rooms: one round trip from the broker to the rooms. A burst that holds retained
state, or a room's first message, takes two steps: the history, then the delivery, each one
round trip for the whole burst.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer

from gateway import metrics, retained
from gateway.conf import gateway_settings
from gateway.envelope import Envelope, Source, new_envelope
from gateway.errors import GatewayError, InvalidMessageError
from gateway.events import BRIDGE_CHANNEL, MQTT_PUBLISH, MqttPublishEvent
from gateway.history import History, RedisWindow, ShardedWindow, history_for
from gateway.jsonutil import check_sendable
from gateway.room_registry import RoomLimitError, record_room
from gateway.rooms import validate_room
from gateway.transport import (
    RedisTransport,
    ShardedTransport,
    Transport,
    room_error,
    transport,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: a frozen one takes 3x as long to make
class Entry:
    """One message on its way into a room.

    Attributes:
        message_id: the envelope's id, for a message the broker may deliver again (QoS 1 and
            2): derived from its delivery, which a redelivery repeats. Fresh when None.
        redelivery: the broker flagged it as possibly delivered before (MQTT's DUP): it enters
            its room only if the first delivery, with the same ``message_id``, did not.
        state: keep the message as the room's state for its topic (a retained message).
        live: send it to the browsers in the room now (False for state learnt at start-up).
        reply_channel: the sender's channel, told if the message cannot reach the broker.
        reply_to: which of the reply channel's sockets sent it.
        sendable: the message is known to pass `check_sendable` (a codec's output), which is
            then not run again.
    """

    room: str
    message: Any
    source: Source
    sender: str | None
    topic: str | None = None
    base64: bool = False
    message_id: str | None = None
    redelivery: bool = False
    state: bool = False
    live: bool = True
    reply_channel: str | None = None
    reply_to: str | None = None
    sendable: bool = False


async def publish(
    room: str,
    message: Any,
    *,
    source: Source,
    sender: str | None,
    layer: BaseChannelLayer | None = None,
    **options: Any,
) -> Envelope:
    """Put ``message`` into ``room`` and return the envelope it travels in.

    ``options`` are the other fields of `Entry`.

    Raises:
        InvalidRoomError: the room name breaks the rules.
        InvalidMessageError: the message is not JSON-serialisable.
    """
    entry = Entry(room=room, message=message, source=source, sender=sender, **options)
    [result] = await publish_many([entry], layer=layer)
    if isinstance(result, GatewayError):
        raise result
    return result


async def publish_many(
    entries: Sequence[Entry], *, layer: BaseChannelLayer | None = None
) -> list[Envelope | GatewayError]:
    """Put each entry into its room, in order; per entry, its envelope or why it was refused.

    ``layer`` carries messages to the bridge worker (the ``mqtt-bridge`` channel); the rooms'
    events travel on the gateway's own transport.
    """
    layer = layer or get_channel_layer()
    if layer is None:
        raise InvalidMessageError("no channel layer is configured")
    gateway_id = gateway_settings().gateway_id  # once: settings are a lazy object
    results = await _open_rooms([_envelope(entry, gateway_id) for entry in entries])
    accepted = [
        (entry, result)
        for entry, result in zip(entries, results, strict=True)
        if not isinstance(result, GatewayError)
    ]
    # Messages the broker may deliver again are appended once: copies go no further.
    once = {
        envelope["id"]: entry.redelivery
        for entry, envelope in accepted
        if entry.message_id is not None
    }
    if len(once) < sum(1 for entry, _ in accepted if entry.message_id is not None):
        accepted = _first_of_each(accepted)  # a copy in the same burst (a device's resend)
    live = [envelope for entry, envelope in accepted if entry.live]
    history = history_for()
    rooms = transport()
    new = await _append_and_deliver(rooms, history, accepted, once)
    sent = new is not None
    if new is None:
        new = await history.append(live, once)  # before the room sees them: history.py
    if len(new) < len(live):
        kept = {id(envelope) for envelope in new}
        accepted = [(e, v) for e, v in accepted if not e.live or id(v) in kept]
        live = new
    for entry, envelope in accepted:
        if entry.state and not await retained.remember(envelope):
            metrics.inc("retained_states_refused")
            logger.warning(
                "room %s keeps no more retained states; %r delivered but not kept",
                envelope["room"],
                envelope["topic"],
            )
    if not sent and live:
        # With once keys, the broker waits for the acknowledgement: only once a replica has
        # the append too (where the master has one), so a failover cannot lose it.
        await rooms.send_rooms(_by_room(live), replicated=bool(once))
        if once:  # from now on a redelivery of these is a copy
            await history.sent([envelope for envelope in live if envelope["id"] in once])
    for entry, envelope in accepted:
        if entry.live and entry.source != "mqtt":
            await _send_to_bridge(layer, rooms, envelope, entry.reply_channel, entry.reply_to)
        if entry.live:
            metrics.inc("messages_published", entry.source)
    return results


def _first_of_each(accepted: list[tuple[Entry, Envelope]]) -> list[tuple[Entry, Envelope]]:
    """``accepted`` without the copies, by id, of redeliverable messages earlier in it
    (counted)."""
    seen: set[str] = set()
    kept = []
    for entry, envelope in accepted:
        if entry.message_id is not None:
            if envelope["id"] in seen:
                metrics.inc("duplicates_removed", "redelivery")
                continue
            seen.add(envelope["id"])
        kept.append((entry, envelope))
    return kept


async def _append_and_deliver(
    rooms: Transport,
    history: History,
    accepted: list[tuple[Entry, Envelope]],
    once: dict[str, bool],
) -> list[Envelope] | None:
    """Append and deliver a burst in one step, where history and the transport share a Redis
    (or the burst's rooms share a shard); the envelopes delivered, or None if the burst takes
    the usual path.

    A burst holding state (retained messages) takes the usual path: the state is stored
    between the append and the delivery."""
    if not accepted or any(e.state or not e.live for e, _ in accepted):
        return None
    envelopes = [envelope for _, envelope in accepted]
    window = history.window
    if isinstance(rooms, RedisTransport) and isinstance(window, RedisWindow):
        seqs = await rooms.append_and_deliver(window, envelopes, once)
    elif isinstance(rooms, ShardedTransport) and isinstance(window, ShardedWindow):
        seqs = await rooms.append_and_deliver(window, envelopes, once)  # one shard's burst
    else:
        return None
    if seqs is None:
        return None
    return history.take(envelopes, seqs)


async def _open_rooms(results: list[Envelope | GatewayError]) -> list[Envelope | GatewayError]:
    """Record each room the envelopes enter; a new room past the cap refuses its messages."""
    refused: dict[str, GatewayError] = {}
    for room in dict.fromkeys(r["room"] for r in results if not isinstance(r, GatewayError)):
        try:
            await record_room(room)
        except RoomLimitError as exc:
            refused[room] = exc
    if not refused:
        return results
    return [r if isinstance(r, GatewayError) else refused.get(r["room"], r) for r in results]


def _envelope(entry: Entry, gateway_id: str) -> Envelope | GatewayError:
    try:
        validate_room(entry.room)
        if not entry.sendable:
            check_sendable(entry.message)
    except GatewayError as exc:
        return exc
    except (TypeError, ValueError) as exc:
        return InvalidMessageError(f"message cannot be sent as JSON: {exc}")
    return new_envelope(
        room=entry.room,
        message=entry.message,
        source=entry.source,
        sender=entry.sender,
        topic=entry.topic,
        base64=entry.base64,
        message_id=entry.message_id,
        gateway=gateway_id,
    )


def _by_room(envelopes: list[Envelope]) -> dict[str, list[Envelope]]:
    by_room: dict[str, list[Envelope]] = {}
    for envelope in envelopes:
        by_room.setdefault(envelope["room"], []).append(envelope)
    return by_room


async def _send_to_bridge(
    layer: BaseChannelLayer,
    rooms: Transport,
    envelope: Envelope,
    reply_channel: str | None,
    reply_to: str | None,
) -> None:
    event = MqttPublishEvent(type=MQTT_PUBLISH, envelope=envelope)
    if reply_channel:
        event["reply_channel"] = reply_channel
    if reply_to:
        event["reply_to"] = reply_to
    try:
        await layer.send(BRIDGE_CHANNEL, event)
    except ChannelFull:
        detail = "the MQTT bridge is not keeping up (or not running); not sent to devices"
        metrics.dropped("bridge_channel_full", f"room {envelope['room']}: {detail}")
        if reply_channel:
            await rooms.send_to(
                reply_channel, room_error(envelope, "bridge_unavailable", detail, reply_to)
            )
