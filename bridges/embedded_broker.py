"""The broker ``manage.py rungateway`` embeds when ``MQTT_URL`` is unset: the gateway's own.

It is `bridges.broker` (MQTT 3.1.1 and 5, in memory) asking `GatewayAuthorizer`, which decides
as every other broker adapter does (`gateway.mqtt_acl`):

- it admits the bridge by the user name and random password it is given at start-up
  (`bridge_settings`), a registered, active device by its secret
  (`gateway.devices.authenticate_device`), and a client without a user name as anonymous, when
  anonymous MQTT is open (``MQTT_ANONYMOUS``: unset, it is open here, for public rooms);
- it answers subscribe, publish and receive (retained messages and wills included) from the
  client's ACL (`gateway.mqtt_acl.acl`), kept per identity and read again every
  ``MQTT_AUTH_SYNC_SECONDS``: new grants, policies and revocations apply within seconds,
  without a database query per message, and a client that may no longer connect is
  disconnected.
"""

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from bridges.broker.server import Broker
from bridges.conf import MqttSettings
from bridges.wire import Connect
from gateway.access import mqtt_access, mqtt_identity
from gateway.devices import authenticate_device
from gateway.mqtt_acl import AclEntry, Identity, RoomAccess, RoomTopics, TopicAction, acl, decide

logger = logging.getLogger(__name__)

MEMO_SIZE = 4096  # decisions remembered per identity until its ACL is read again
_ACTIONS: dict[str, TopicAction] = {
    "subscribe": "subscribe",
    "publish": "publish",
    "receive": "receive",
}


def bridge_settings(host: str, port: int, *, gateway_id: str) -> MqttSettings:
    """How the bridge connects to the embedded broker: as itself, with a password made now.

    The user name starts with ``$``, which no device name may: no device can pass for it. The
    bridge speaks MQTT 5 to it, as it does to Mosquitto in production.
    """
    return MqttSettings(
        host=host,
        port=port,
        protocol="5",
        username=f"${gateway_id}-bridge",
        password=secrets.token_urlsafe(32),
        client_id=f"{gateway_id}-bridge",
    )


def anonymous_mqtt_open() -> bool:
    """Whether anonymous clients may connect to the embedded broker (``MQTT_ANONYMOUS``).

    Unset, they may (for public rooms): the first minutes with the gateway need no credentials.
    """
    return settings.MQTT_ANONYMOUS != "none"


async def start_embedded_broker(
    bridge: MqttSettings,
    *,
    anonymous_mqtt: bool | None = None,
    refresh_seconds: float | None = None,
) -> Broker:
    """Start the broker on ``bridge.host:bridge.port``, admitting ``bridge``'s credentials.

    Args:
        anonymous_mqtt: whether anonymous clients may connect (default: `anonymous_mqtt_open`).
        refresh_seconds: how often access is read again (default: ``MQTT_AUTH_SYNC_SECONDS``).
    """
    if anonymous_mqtt is None:
        anonymous_mqtt = anonymous_mqtt_open()
    if refresh_seconds is None:
        refresh_seconds = float(settings.MQTT_AUTH_SYNC_SECONDS)
    authorizer = GatewayAuthorizer(
        bridge_username=bridge.username or "",
        bridge_password=bridge.password or "",
        anonymous_mqtt=anonymous_mqtt,
    )
    broker = Broker(authorizer)
    await broker.start(bridge.host, bridge.port)
    authorizer.keep_fresh(broker, refresh_seconds)
    logger.info(
        "embedded MQTT broker (MQTT 3.1.1 and 5) listening on %s:%s; anonymous clients: %s. "
        "It keeps sessions and retained messages in memory only, speaks no TLS and is for one "
        "machine: use Mosquitto (MQTT_URL) in production",
        bridge.host,
        bridge.port,
        "public rooms" if anonymous_mqtt else "refused",
    )
    return broker


@dataclass
class Acl:
    """One identity's ACL as read at ``loaded_at`` (monotonic seconds), with its decisions."""

    identity: Identity
    entries: list[AclEntry]
    connect: bool
    loaded_at: float
    _memo: dict[tuple[TopicAction, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def allows(self, action: TopicAction, topic: str) -> bool:
        key = (action, topic)
        allowed = self._memo.get(key)
        if allowed is None:
            allowed = decide(self.identity, action, topic, self.entries, connect=self.connect)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = allowed
        return allowed


def load_acl(identity: Identity, *, anonymous_mqtt: bool, topics: RoomTopics) -> Acl:
    """``identity``'s ACL, read from the database now (a few queries)."""
    access = mqtt_access(identity, anonymous_mqtt=anonymous_mqtt)
    return Acl(identity, acl(identity, access, topics), access.connect, time.monotonic())


def _admit(
    username: str | None, password: str | None, *, anonymous_mqtt: bool, topics: RoomTopics
) -> Acl | None:
    """The ACL of the device or anonymous client these credentials admit (the bridge aside)."""
    identity = mqtt_identity(username, bridge_username=None)
    if identity.kind == "anonymous" and not anonymous_mqtt:
        return None
    if identity.kind == "device" and authenticate_device(username or "", password or "") is None:
        return None
    granted = load_acl(identity, anonymous_mqtt=anonymous_mqtt, topics=topics)
    return granted if granted.connect else None


class GatewayAuthorizer:
    """The embedded broker's `bridges.broker.server.Authorizer`: the gateway's decisions."""

    def __init__(self, *, bridge_username: str, bridge_password: str, anonymous_mqtt: bool) -> None:
        self.bridge_username = bridge_username
        self.bridge_password = bridge_password.encode()
        self.anonymous_mqtt = anonymous_mqtt
        self.topics: RoomTopics = settings.BRIDGE_RULES
        self._acls: dict[Identity, Acl] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def authenticate(self, connect: Connect) -> Identity | None:
        username = connect.username
        password = connect.password or b""
        if self.bridge_username and username == self.bridge_username:
            if self.bridge_password and hmac.compare_digest(password, self.bridge_password):
                identity = Identity("bridge", username)
                bridge = RoomAccess(default="write", connect=True)
                self._acls[identity] = Acl(
                    identity, acl(identity, bridge, self.topics), True, math.inf
                )
                return identity
            logger.info("refused MQTT client %r: wrong password for the bridge", connect.client_id)
            return None
        try:
            # Password hashing takes a while: not on the thread the bridge's queries run on.
            granted: Acl | None = await database_sync_to_async(_admit, thread_sensitive=False)(
                username,
                password.decode("utf-8", "replace"),
                anonymous_mqtt=self.anonymous_mqtt,
                topics=self.topics,
            )
        except Exception:
            logger.exception("could not check MQTT client %r: refused", connect.client_id)
            return None
        if granted is None:
            logger.info("refused MQTT client %r (user name %r)", connect.client_id, username)
            return None
        self._acls[granted.identity] = granted
        return granted.identity

    def may(self, identity: Any, action: str, topic: str) -> bool:
        granted = self._acls.get(identity)
        verb = _ACTIONS.get(action)
        return granted is not None and verb is not None and granted.allows(verb, topic)

    def may_connect(self, identity: Any) -> bool:
        granted = self._acls.get(identity)
        return granted is not None and granted.connect

    def keep_fresh(self, broker: Broker, seconds: float) -> None:
        """Read every known client's access again every ``seconds``, and apply it."""
        self._refresher = asyncio.create_task(
            self._keep_fresh(broker, seconds), name="embedded-broker-access"
        )

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _keep_fresh(self, broker: Broker, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.refresh(broker)
            except Exception:
                logger.exception("could not read the MQTT access again: retrying")

    async def refresh(self, broker: Broker) -> None:
        """Read the access of every client the broker holds a session of; disconnect those
        that may no longer connect."""
        started = time.monotonic()
        known = {s.identity for s in broker.sessions.values() if isinstance(s.identity, Identity)}
        for identity in known:
            if identity.kind == "bridge":
                continue
            try:
                granted: Acl = await database_sync_to_async(load_acl)(
                    identity, anonymous_mqtt=self.anonymous_mqtt, topics=self.topics
                )
            except Exception:
                # A passing database failure must not disconnect the fleet: keep what was read.
                logger.exception("could not read the MQTT access of %s: kept as it was", identity)
                continue
            self._acls[identity] = granted
        # Identities no session holds any more; one admitted meanwhile was read after `started`.
        for identity, granted in list(self._acls.items()):
            if identity not in known and granted.loaded_at < started:
                del self._acls[identity]
        kicked = broker.kick()
        if kicked:
            logger.info("embedded broker: disconnected %d client(s) no longer allowed", kicked)
