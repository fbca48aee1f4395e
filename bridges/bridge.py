"""The MQTT bridge: device messages into rooms, room messages out to the broker, losing nothing.

Inbound, each message is matched against the rules, decoded, and enters its rooms through
`gateway.publish.publish` with ``source="mqtt"`` (which never sends it back to the bridge). It is
acknowledged to the broker only after that succeeded; while the channel layer or database is
unavailable the bridge retries, and the broker keeps the backlog. A QoS 1 or 2 message gets an
id derived from its delivery (client, topic, packet id, payload), so a redelivery after a crash
(flagged DUP by the broker) carries the id of the first delivery, and the history, which records
that id in the same step that gives the message its ``seq``, lets the copy go no further.

Outbound, an envelope from the ``mqtt-bridge`` channel is published to every topic the rules give
for its room. paho retries it until the broker acknowledges; if that takes longer than the
publish timeout, the sender is told.

The bridge's own publications are recognised by the origin property (MQTT 5, including shared
subscriptions, where No Local is not allowed) and by the gateway id in the envelope (MQTT 3.1.1).
"""

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisFullError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridges.client import (
    Incoming,
    MqttLink,
    PublishRefusedError,
    RedeliverError,
    backoff_delay,
)
from bridges.codecs import Codec, Decoded, codec_for_content_type, get_codec
from bridges.conf import MqttSettings
from bridges.rules import MAX_SENDER_LENGTH, MAX_TOPIC_LENGTH, Inbound, RuleSet, is_valid_sender
from gateway import metrics, retained
from gateway.conf import gateway_settings
from gateway.envelope import Envelope
from gateway.errors import GatewayError
from gateway.models import Device
from gateway.presence import presence_for
from gateway.publish import Entry, publish_many
from gateway.shared import shard_names
from gateway.transport import room_error, transport

logger = logging.getLogger(__name__)
HANDOFF_RETRY_CAP_SECONDS = 1.0
# Room steps held for shards that are down, at most; past that the bridge stops reading (the
# broker keeps the backlog) until a shard is back.
HELD_MAX = 1000
HELD_BATCH = 256  # held messages handed on together when their shard is back
MAX_DEVICE_ID_LENGTH = 64  # characters of a device's ``message-id``
T = TypeVar("T")

# Failures that pass: the message is retried, not dropped.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    RedisConnectionError,
    RedisTimeoutError,
    RedisFullError,  # Redis at its maxmemory refuses writes until an operator makes room
    OperationalError,
    InterfaceError,
)
ENVELOPE_CODECS = frozenset({"json", "msgpack"})  # codecs that carry the whole envelope


@dataclass(slots=True)
class _Call:
    """A step of a device message that is not a room message: a presence or state change."""

    room: str
    run: Callable[[], Awaitable[Any]]


Step = Entry | _Call
Results = list[Envelope | GatewayError]


@dataclass(slots=True)
class _Hold:
    """A device message some of whose steps wait for their shard: acknowledged to the broker
    once none does (``waiting`` counts them, plus one while the message is still read)."""

    incoming: Incoming
    waiting: int = 1


@dataclass(slots=True)
class _Held:
    """A step waiting for its shard, with the message it came from and the redeliveries of
    that message that came while it waited (they are done when it is)."""

    step: "Step"
    hold: _Hold
    copies: list[_Hold]


class Bridge:
    """Bridges topics and rooms in both directions, as the rules say.

    With rooms on several Redis shards (``REDIS_SHARDS``), a shard that is down holds up only
    its rooms: their steps wait in order, unacknowledged, in a queue per shard (at most
    `HELD_MAX` in all) that is handed on when the shard is back, while the other shards' rooms
    go on. With one Redis every step waits in place, as there is nothing else to go on with.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        gateway_id: str,
        rules: RuleSet,
        publish_timeout: float = 10.0,
    ) -> None:
        self.gateway_id = gateway_id
        self.rules = rules
        self.publish_timeout = publish_timeout
        self._watches: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Per shard: steps held while it is down, in order; and the held room messages by
        # (id, room), so that a redelivery of one (after a reconnect) waits on it, not twice.
        self._held: dict[int, deque[_Held]] = {}
        self._held_ids: dict[tuple[str, str], _Held] = {}
        self._held_count = 0
        self._held_room = asyncio.Event()  # set while fewer than HELD_MAX are held
        self._held_room.set()
        self._drainers: dict[int, asyncio.Task[None]] = {}
        self.link = MqttLink(
            settings,
            filters=rules.subscriptions(),
            handler=self.handle_inbound,
            origin=gateway_id,
            shared_group=gateway_id,
            max_payload_bytes=gateway_settings().max_payload_bytes,
        )

    @classmethod
    def from_settings(cls, mqtt: MqttSettings) -> "Bridge":
        """The bridge the Django settings describe, on broker ``mqtt``."""
        return cls(
            mqtt,
            gateway_id=gateway_settings().gateway_id,
            rules=settings.BRIDGE_RULES,
            publish_timeout=settings.BRIDGE_PUBLISH_TIMEOUT,
        )

    async def start(self) -> None:
        """Connect to the broker (retrying in the background) and start bridging."""
        logger.info("bridge %s connecting to %s", self.gateway_id, self.link.settings.describe())
        await self.link.start()

    async def stop(self) -> None:
        """Drain in-flight messages both ways, then disconnect."""
        self._stopping = True
        await self.link.stop()
        tasks = (*self._watches, *self._drainers.values())
        for task in tasks:
            task.cancel()  # held messages stay unacknowledged: the broker redelivers them
        await asyncio.gather(*tasks, return_exceptions=True)

    # Broker -> rooms.

    async def handle_inbound(self, messages: list[Incoming]) -> list[Incoming]:
        """Deliver device messages (those that arrived together) to their rooms, in order;
        the messages held for a shard that is down (see the class), acknowledged later.

        Each message is handed on or counted as dropped; a passing failure (Redis, the
        database) is retried until it succeeds, so the broker's acknowledgement, which follows,
        never covers a message that went nowhere.
        """
        rooms = transport()
        lanes = rooms.lanes
        holds: list[_Hold] = []
        entries: list[tuple[Entry, _Hold]] = []
        limit = gateway_settings().max_payload_bytes  # once: settings are a lazy object
        for message in messages:
            # A QoS 1 or 2 message's id comes from its delivery, which a redelivery repeats:
            # the history appends a redelivery only if the first delivery never got there.
            # A device that names its messages makes its own resends copies the same way.
            message_id, named = None, False
            if message.qos > 0:
                message_id = self._device_identity(message)
                named = message_id is not None
                message_id = message_id or self._identity(message)
            hold = _Hold(message)
            holds.append(hold)
            for step in self._steps(message, message_id, limit, named=named):
                # A step whose shard has steps waiting (only with shards) waits behind them.
                lane = rooms.lane_of(step.room) if lanes > 1 else 0
                if isinstance(step, Entry):
                    if lanes > 1 and self._held.get(lane):
                        if self._held_count >= HELD_MAX:  # the hold waits: send the rest first
                            await self._enter(entries)
                            entries = []
                        await self._hold(lane, [(step, hold)])
                    else:
                        entries.append((step, hold))
                    continue
                await self._enter(entries)  # what came before it goes first
                entries = []
                if lanes > 1 and self._held.get(lane):
                    await self._hold(lane, [(step, hold)])
                else:
                    await self._call(step, hold)
        await self._enter(entries)
        held = []
        for hold in holds:
            hold.waiting -= 1  # read whole
            if hold.waiting:
                held.append(hold.incoming)
        return held

    async def _call(self, step: _Call, hold: _Hold) -> None:
        rooms = transport()
        if rooms.lanes == 1:
            await self._hand_on(step.run)
            return
        try:
            await step.run()
        except TRANSIENT_ERRORS as exc:
            if self._stopping:
                raise RedeliverError(str(exc)) from exc
            await self._hold(rooms.lane_of(step.room), [(step, hold)], exc)

    async def _hold(
        self, lane: int, steps: list[tuple[Step, _Hold]], why: BaseException | None = None
    ) -> None:
        """Hold ``steps`` for shard ``lane``, to be handed on when it is back; first, while
        `HELD_MAX` are held, wait for room (the broker keeps what comes meanwhile)."""
        while self._held_count >= HELD_MAX:
            await self._held_room.wait()
        queue = self._held.setdefault(lane, deque())
        if why is not None and not queue:
            logger.warning(
                "Redis shard %s is unreachable (%s): its rooms' device messages wait for it",
                shard_names()[lane],
                why,
            )
        for step, hold in steps:
            hold.waiting += 1
            message_id = step.message_id if isinstance(step, Entry) else None
            waiting = self._held_ids.get((message_id, step.room)) if message_id else None
            if waiting is not None:  # a redelivery of one that waits: done when it is
                waiting.copies.append(hold)
                continue
            item = _Held(step, hold, [])
            queue.append(item)
            self._held_count += 1
            if message_id:
                self._held_ids[(message_id, step.room)] = item
        if self._held_count >= HELD_MAX:
            self._held_room.clear()
        metrics.set_gauge("bridge_held", self._held_count)
        drainer = self._drainers.get(lane)
        if drainer is None or drainer.done():
            self._drainers[lane] = asyncio.get_running_loop().create_task(
                self._drain(lane), name=f"bridge-held-{lane}"
            )

    async def _drain(self, lane: int) -> None:
        """Hand on what is held for shard ``lane``, in order, once it is back."""
        queue = self._held[lane]
        attempt = 0
        while queue:
            batch = _next_held(queue)
            try:
                await self._run_held(batch)
            except TRANSIENT_ERRORS as exc:
                delay = backoff_delay(attempt, cap=HANDOFF_RETRY_CAP_SECONDS)
                attempt += 1
                metrics.inc("handoff_retries", "shard_down")
                logger.debug("Redis shard %s still unreachable (%s)", shard_names()[lane], exc)
                await asyncio.sleep(delay)
                continue
            except Exception:  # as the link does with a batch that fails: counted, let go
                for step in batch:
                    metrics.dropped("handler_error", f"room {step.room}")
                logger.exception("handing on %d held steps failed", len(batch))
            attempt = 0
            self._release(queue, len(batch))
        logger.info("Redis shard %s is back: its rooms' device messages go on", shard_names()[lane])

    async def _run_held(self, batch: list[Step]) -> None:
        first = batch[0]
        if isinstance(first, _Call):
            await first.run()
            return
        # Each is checked like a redelivery: a failed attempt may have got there.
        entries = _checked_again([e for e in batch if isinstance(e, Entry)])
        self._count(entries, await publish_many(entries))

    def _release(self, queue: "deque[_Held]", count: int) -> None:
        """Take ``count`` handed-on steps off ``queue``; acknowledge the messages now done."""
        done = []
        for _ in range(count):
            item = queue.popleft()
            if isinstance(item.step, Entry) and item.step.message_id:
                self._held_ids.pop((item.step.message_id, item.step.room), None)
            for hold in (item.hold, *item.copies):
                hold.waiting -= 1
                if not hold.waiting:
                    done.append(hold.incoming)
        self._held_count -= count
        metrics.set_gauge("bridge_held", self._held_count)
        if self._held_count < HELD_MAX:
            self._held_room.set()
        if done:
            self.link.acknowledge(done)

    def _targets(self, message: Incoming, limit: int) -> "list[Inbound] | None":
        """Where a device message goes; None once why it goes nowhere is counted."""
        if len(message.topic) > MAX_TOPIC_LENGTH:  # kept as room state, and in the database
            detail = f"a topic of {len(message.topic)} characters, over {MAX_TOPIC_LENGTH}"
            metrics.dropped("topic_too_long", f"{detail}: {message.topic[:80]!r}")
            return None
        targets = self.rules.inbound(message.topic)
        if not targets:
            metrics.dropped("no_rule", f"topic {message.topic!r} matches no rule or no valid room")
            return None
        if any(t.sender is not None and not is_valid_sender(t.sender) for t in targets):
            detail = f"its sender is not 1-{MAX_SENDER_LENGTH} printable characters"
            metrics.dropped("invalid_sender", f"topic {message.topic!r}: {detail}")
            return None
        if len(message.payload) > limit:
            detail = (
                f"topic {message.topic!r}: {len(message.payload)} bytes, over the {limit} allowed"
            )
            metrics.dropped("payload_too_big", detail)
            return None
        return targets

    def _steps(
        self, message: Incoming, message_id: str | None, limit: int, *, named: bool = False
    ) -> list[Step]:
        """What one device message asks for: room entries, or presence and state changes
        (``named``: its id is the device's own, checked on every delivery)."""
        if message.origin == self.gateway_id:
            metrics.inc("mqtt_own_publications_skipped")
            return []
        targets = self._targets(message, limit)
        if targets is None:
            return []
        if message.retain and not message.payload:  # an empty retained message clears the state
            return [
                _Call(target.room, partial(retained.forget, target.room, message.topic))
                for target in targets
            ]
        codec = codec_for_content_type(message.content_type) or get_codec(targets[0].rule.codec)
        decoded = codec.decode(message.payload)  # never raises: it falls back and counts
        if self._is_own_envelope(decoded):
            metrics.inc("mqtt_own_publications_skipped")
            return []
        steps: list[Step] = []
        for target in targets:
            online = device_status(decoded.message) if target.rule.presence else None
            if online is not None and target.sender is not None:
                run = partial(self._device_presence, target.room, target.sender, online=online)
                steps.append(_Call(target.room, run))
                continue
            steps.append(
                Entry(
                    room=target.room,
                    message=decoded.message,
                    source="mqtt",
                    sender=target.sender,
                    topic=message.topic,
                    base64=decoded.base64,
                    message_id=message_id,
                    # a device's id is checked on every delivery: its resend is not flagged
                    redelivery=message.dup or named,
                    state=message.retain,
                    live=not message.snapshot,
                    sendable=decoded.sendable,
                )
            )
        return steps

    async def _enter(self, entries: list[tuple[Entry, _Hold]]) -> None:
        """Hand on room messages; with shards, each shard's on its own (one that fails is
        held), else retried until it succeeds."""
        if not entries:
            return
        rooms = transport()
        if rooms.lanes == 1:
            only = [entry for entry, _ in entries]
            self._count(only, await self._hand_on(self._attempts(only)))
            return
        by_lane: dict[int, list[tuple[Entry, _Hold]]] = {}
        for entry, hold in entries:
            by_lane.setdefault(rooms.lane_of(entry.room), []).append((entry, hold))
        lanes = list(by_lane)
        found = await asyncio.gather(
            *(publish_many([entry for entry, _ in by_lane[lane]]) for lane in lanes),
            return_exceptions=True,
        )
        for lane, result in zip(lanes, found, strict=True):
            if isinstance(result, TRANSIENT_ERRORS):
                if self._stopping:
                    raise RedeliverError(str(result)) from result
                await self._hold(lane, list(by_lane[lane]), result)
            elif isinstance(result, Exception):  # as the link does with a failed batch
                for entry, _ in by_lane[lane]:
                    metrics.dropped("handler_error", f"topic {entry.topic!r}")
                logger.error("handing on to shard %s failed", shard_names()[lane], exc_info=result)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._count([entry for entry, _ in by_lane[lane]], result)

    def _attempts(
        self, entries: list[Entry]
    ) -> Callable[[], Awaitable[list[Envelope | GatewayError]]]:
        tries = 0

        def attempt() -> Awaitable[list[Envelope | GatewayError]]:
            # A retry may follow an attempt that reached Redis before its answer was lost (a
            # dropped connection, a failover): it is checked like a broker's redelivery, so
            # what entered its room then is a copy now, not a second message.
            nonlocal tries
            tries += 1
            if tries == 1:
                return publish_many(entries)
            return publish_many(_checked_again(entries))

        return attempt

    def _count(self, entries: list[Entry], results: Results) -> None:
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, GatewayError):
                metrics.dropped(result.code, f"topic {entry.topic!r}: {result}")
            else:
                metrics.inc("mqtt_messages_in")

    async def _hand_on(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run a hand-off, retrying it for as long as its failure is a passing one."""
        attempt = 0
        while True:
            try:
                return await attempt_once()
            except TRANSIENT_ERRORS as exc:
                if self._stopping:  # not handed on: the broker gives it to the next session
                    raise RedeliverError(str(exc)) from exc
                # Redis or the database is back within a second of returning: a retry costs
                # one round trip, and the rooms wait for it.
                delay = backoff_delay(attempt, cap=HANDOFF_RETRY_CAP_SECONDS)
                attempt += 1
                metrics.inc("handoff_retries")
                logger.warning("handing on failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _device_presence(self, room: str, device: str, *, online: bool) -> None:
        presence = presence_for()
        if online:
            verified = await database_sync_to_async(_is_registered_device)(device)
            await presence.join(
                room, f"device:{device}", "device", device, hold=False, verified=verified
            )
        else:
            await presence.leave(room, f"device:{device}")

    def _identity(self, message: Incoming) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for part in (self.link.settings.client_id, message.topic, str(message.mid)):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(message.payload)
        return digest.hexdigest()

    def _device_identity(self, message: Incoming) -> str | None:
        """The id of a message its device named (``message-id``), scoped to its topic; None if
        it has none, or (counted) one that is not 1-64 printable characters."""
        name = message.device_id
        if name is None:
            return None
        if not 0 < len(name) <= MAX_DEVICE_ID_LENGTH or not name.isprintable():
            metrics.inc("mqtt_message_ids_ignored")
            return None
        digest = hashlib.blake2b(digest_size=16)
        for part in ("device", message.topic, name):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def _is_own_envelope(self, decoded: Decoded) -> bool:
        value = decoded.message
        return isinstance(value, dict) and value.get("gateway") == self.gateway_id and "id" in value

    # Rooms -> broker.

    async def publish_envelope(
        self, envelope: Envelope, reply_channel: str | None = None, reply_to: str | None = None
    ) -> None:
        """Publish a room message to every topic the rules give for its room; if it cannot
        reach the broker, tell ``reply_to`` through ``reply_channel``."""
        targets = self.rules.outbound(envelope["room"])
        if not targets:
            metrics.inc("mqtt_messages_not_published", "no_rule")
            return
        for rule, topic in targets:
            codec = get_codec(rule.codec)
            future = self.link.publish(
                topic,
                _encode(codec, envelope),
                qos=rule.qos,
                retain=rule.retain,
                content_type=codec.content_type,
            )
            watch = asyncio.create_task(
                self._watch(future, topic, envelope, (reply_channel, reply_to))
            )
            self._watches.add(watch)
            watch.add_done_callback(self._watches.discard)

    async def _watch(
        self,
        future: "asyncio.Future[None]",
        topic: str,
        envelope: Envelope,
        reply: tuple[str | None, str | None],
    ) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(future), self.publish_timeout)
        except TimeoutError:
            metrics.inc("mqtt_publish_timeouts")
            await self._tell(
                reply,
                "broker_unreachable",
                f"the broker has not confirmed the message after {self.publish_timeout:g} s; "
                "it is kept and sent when the broker is back",
                envelope,
            )
            return
        except PublishRefusedError as exc:
            metrics.dropped("mqtt_publish_refused", f"{topic}: {exc}")
            await self._tell(reply, "broker_refused", str(exc), envelope)
            return
        metrics.inc("mqtt_messages_out")

    async def _tell(
        self, reply: tuple[str | None, str | None], code: str, detail: str, envelope: Envelope
    ) -> None:
        channel, to = reply
        if channel is None:
            return
        await transport().send_to(channel, room_error(envelope, code, detail, to))


def _checked_again(entries: list[Entry]) -> list[Entry]:
    """``entries`` to try again: each that the broker may deliver again is checked like a
    redelivery, as an attempt that failed may have reached its room."""
    return [replace(entry, redelivery=True) if entry.message_id else entry for entry in entries]


def _next_held(queue: "deque[_Held]") -> list[Step]:
    """What to hand on next of a shard's held steps: a presence or state change alone, or the
    room messages up to the next one (at most `HELD_BATCH`)."""
    first = queue[0].step
    if isinstance(first, _Call):
        return [first]
    batch: list[Step] = []
    for item in queue:
        if not isinstance(item.step, Entry) or len(batch) >= HELD_BATCH:
            break
        batch.append(item.step)
    return batch


_ONLINE = {"online", "on", "up", "connected", "true", "1", "yes"}
_OFFLINE = {"offline", "off", "down", "disconnected", "false", "0", "no"}


def device_status(value: Any) -> bool | None:
    """Online (True), offline (False) or not a status (None), from a status payload.

    Accepts ``online``/``offline`` and the usual synonyms, booleans, 1/0, and objects with an
    ``online`` boolean or a ``status`` string.
    """
    if isinstance(value, dict):
        if isinstance(value.get("online"), bool):
            return bool(value["online"])
        value = value.get("status")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str):
        word = str(value).strip().lower()
        if word in _ONLINE:
            return True
        if word in _OFFLINE:
            return False
    return None


def _encode(codec: Codec, envelope: Envelope) -> bytes:
    if codec.name in ENVELOPE_CODECS:
        return codec.encode(envelope)
    return codec.encode(envelope["message"])


def _is_registered_device(name: str) -> bool:
    """Whether ``name`` is a registered, active device's: its presence is then a verified
    identity (a broker that enforces the gateway's MQTT access lets only that device, signed
    in, publish under its name)."""
    return Device.objects.filter(name=name, is_active=True).exists()
