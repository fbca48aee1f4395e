"""The broker ``manage.py rungateway`` embeds when ``MQTT_URL`` is unset (amqtt, MQTT 3.1.1).

It decides as every other broker adapter does (`gateway.mqtt_acl`), through two amqtt plugins
configured in the broker's ``plugins`` section:

- `GatewayAuthPlugin` admits the bridge by the user name and random password it is given at
  start-up (`bridge_settings`), a registered, active device by its secret
  (`gateway.devices.authenticate_device`), and a client without a user name as anonymous, when
  anonymous MQTT is open (``MQTT_ANONYMOUS``: unset, it is open here, for public rooms). A client
  whose will names a topic it may not publish to is refused.
- `GatewayTopicPlugin` answers amqtt's subscribe, publish and receive checks from the client's
  ACL (`gateway.mqtt_acl.acl`), kept per identity and read again every
  ``MQTT_AUTH_SYNC_SECONDS``: new grants, policies and revocations apply within seconds, without
  a database query per message.

What amqtt 0.12 does not let a plugin do, and what stands in for it:

- It sends retained messages without asking whether the client may receive them: when the
  client subscribes, and, to every client that connects, for every filter that any client holds.
  So the broker keeps a retained message only on a topic that every client that may connect may
  receive (the anonymous clients, when anonymous MQTT is open, and a device without grants);
  anywhere else a retained publication is delivered live, to those who may receive it, and not
  kept. (The retained flag is cleared when amqtt announces the publication, which it does
  before checking and storing it; a retained message stored anyway, such as a will, is taken
  out again, and so are those a change of policy no longer lets everyone read.)
- It has no way to disconnect a client. A revoked device stays connected but, from the next
  refresh on, may publish, subscribe and receive nothing, its will is dropped, and it cannot
  connect again.
- It lets a client with the client id of a connected one wipe that one's session before it is
  authenticated, so the bridge's client id gets a random suffix no client can guess.
"""

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from channels.db import database_sync_to_async
from django.conf import settings

from bridges.conf import MqttSettings
from gateway.access import DEFAULT_ACCESS, Access, mqtt_access, mqtt_identity
from gateway.devices import authenticate_device
from gateway.models import RoomPolicy
from gateway.mqtt_acl import AclEntry, Identity, RoomAccess, RoomTopics, TopicAction, acl, decide

logger = logging.getLogger(__name__)

# Where the auth plugin leaves the identity it admitted, for the topic plugin (amqtt keeps a
# session's ``attributes`` for plugins).
IDENTITY_ATTRIBUTE = "rooms_gateway.identity"
MEMO_SIZE = 4096  # decisions remembered per identity until its ACL is read again
# Connected clients' ACLs are read again every refresh period, in the background; one that has
# not been for this many periods (a client new to the topic plugin, say) is read on use.
STALE_PERIODS = 2
_ACTIONS: dict[str, TopicAction] = {
    "subscribe": "subscribe",
    "publish": "publish",
    "receive": "receive",
}


def bridge_settings(host: str, port: int, *, gateway_id: str) -> MqttSettings:
    """How the bridge connects to the embedded broker: as itself, with a password made now.

    The user name starts with ``$``, which no device name may: no device can pass for it.
    """
    return MqttSettings(
        host=host,
        port=port,
        protocol="3.1.1",
        username=f"${gateway_id}-bridge",
        password=secrets.token_urlsafe(32),
        client_id=f"{gateway_id}-bridge-{secrets.token_hex(8)}",
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
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{bridge.host}:{bridge.port}"}},
            "plugins": {
                f"{__name__}.GatewayAuthPlugin": {
                    "bridge_username": bridge.username or "",
                    "bridge_password": bridge.password or "",
                    "anonymous": anonymous_mqtt,
                },
                f"{__name__}.GatewayTopicPlugin": {
                    "anonymous": anonymous_mqtt,
                    "refresh_seconds": refresh_seconds,
                },
            },
        }
    )
    await broker.start()
    logger.info(
        "embedded MQTT broker listening on %s:%s; anonymous clients: %s",
        bridge.host,
        bridge.port,
        "public rooms" if anonymous_mqtt else "refused",
    )
    return broker


def session_identity(session: Any) -> Identity | None:
    """The identity the auth plugin admitted on ``session``; None if it admitted none."""
    identity = session.attributes.get(IDENTITY_ATTRIBUTE)
    return identity if isinstance(identity, Identity) else None


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

    @classmethod
    def nothing(cls, identity: Identity) -> "Acl":
        """Everything denied: for an identity whose access could not be read."""
        return cls(identity, [], connect=False, loaded_at=time.monotonic())

    def allows(self, action: TopicAction, topic: str) -> bool:
        key = (action, topic)
        allowed = self._memo.get(key)
        if allowed is None:
            allowed = decide(self.identity, action, topic, self.entries, connect=self.connect)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = allowed
        return allowed


@dataclass(frozen=True)
class RetainPolicy:
    """Which retained messages the broker may keep: those every possible reader may receive.

    amqtt hands retained messages to clients without a receive check (see the module's
    docstring), so a topic is kept only if each of ``readers``, the least privileged identities
    that may connect, may receive it.
    """

    readers: tuple[Acl, ...]

    def allows(self, topic: str) -> bool:
        return all(reader.allows("receive", topic) for reader in self.readers)


def load_acl(identity: Identity, *, anonymous_mqtt: bool, topics: RoomTopics) -> Acl:
    """``identity``'s ACL, read from the database now (a few queries)."""
    access = mqtt_access(identity, anonymous_mqtt=anonymous_mqtt)
    return Acl(identity, acl(identity, access, topics), access.connect, time.monotonic())


def _least_device_access() -> RoomAccess:
    """What a device without grants may do: every registered device may do at least that.

    As `gateway.access.mqtt_access` has it, grants aside: a public room's level for signed-in
    users and devices, nothing in a private room, the default level in a room without a policy.
    """
    rooms: dict[str, Access] = {
        policy.room: "none" if policy.private else cast(Access, policy.authenticated)
        for policy in RoomPolicy.objects.all()
    }
    return RoomAccess(default=DEFAULT_ACCESS, rooms=rooms, connect=True)


def load_retain_policy(*, anonymous_mqtt: bool, topics: RoomTopics) -> RetainPolicy:
    """The `RetainPolicy` of the policies and grants as they are now."""
    device = Identity("device")
    readers = [Acl(device, acl(device, _least_device_access(), topics), True, time.monotonic())]
    if anonymous_mqtt:
        readers.append(load_acl(Identity.anonymous(), anonymous_mqtt=True, topics=topics))
    return RetainPolicy(tuple(readers))


def _admit(
    username: str | None, password: str | None, *, anonymous_mqtt: bool, will_topic: str | None
) -> tuple[Identity, bool] | None:
    """The device or anonymous client these credentials admit, if any (the bridge aside).

    Returns:
        The identity and whether a retained will may be kept on ``will_topic``; None if the
        client may not connect, or not with a will on ``will_topic``.
    """
    identity = mqtt_identity(username, bridge_username=None)
    if identity.kind == "anonymous" and not anonymous_mqtt:
        return None
    if identity.kind == "device" and authenticate_device(username or "", password or "") is None:
        return None
    topics: RoomTopics = settings.BRIDGE_RULES
    granted = load_acl(identity, anonymous_mqtt=anonymous_mqtt, topics=topics)
    if not granted.connect:
        return None
    if will_topic is None:
        return identity, False
    if not granted.allows("publish", will_topic):
        return None
    retain = load_retain_policy(anonymous_mqtt=anonymous_mqtt, topics=topics)
    return identity, retain.allows(will_topic)


class GatewayAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admits the bridge, registered and active devices, and anonymous clients if allowed."""

    @dataclass
    class Config:
        bridge_username: str = ""
        """The bridge's user name; empty: no client is the bridge."""
        bridge_password: str = ""
        """The bridge's password; empty: no client is the bridge."""
        anonymous: bool = False
        """Whether a client without a user name may connect (to public rooms)."""

    async def authenticate(self, *, session: Any) -> bool:
        session.attributes.pop(IDENTITY_ATTRIBUTE, None)
        username: str | None = session.username
        try:
            identity = await self._identify(session)
        except Exception:
            logger.exception("could not check MQTT client %r: refused", session.client_id)
            return False
        if identity is None:
            logger.info(
                "refused MQTT client %r (user name %r)", session.client_id, username or None
            )
            return False
        session.is_anonymous = identity.kind == "anonymous"
        session.attributes[IDENTITY_ATTRIBUTE] = identity
        return True

    async def _identify(self, session: Any) -> Identity | None:
        config = self.config
        username: str | None = session.username
        password: str = session.password or ""
        if config.bridge_username and username == config.bridge_username:
            expected = config.bridge_password.encode()
            if expected and hmac.compare_digest(
                password.encode("utf-8", "surrogatepass"), expected
            ):
                session.will_retain = False  # its status: no one else may read it
                return Identity("bridge", username)
            return None
        will_topic: str | None = session.will_topic if session.will_flag else None
        # Password hashing takes a while: not on the thread the bridge's own queries run on.
        admitted: tuple[Identity, bool] | None = await database_sync_to_async(
            _admit, thread_sensitive=False
        )(username, password, anonymous_mqtt=config.anonymous, will_topic=will_topic)
        if admitted is None:
            return None
        identity, keep_will = admitted
        if will_topic is not None and not keep_will:
            session.will_retain = False
        return identity


class GatewayTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Subscribe, publish and receive, decided by `gateway.mqtt_acl` for the admitted identity."""

    @dataclass
    class Config:
        anonymous: bool = False
        """Whether anonymous clients may connect (their ACL is then public rooms')."""
        refresh_seconds: float = 2.0
        """How long an ACL is used before it is read again."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.topics: RoomTopics = settings.BRIDGE_RULES
        self._acls: dict[Identity, Acl] = {}
        self._loading: dict[Identity, asyncio.Future[Acl]] = {}
        self._retain: RetainPolicy | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        verb = _ACTIONS.get(str(action))
        if session is None or topic is None or verb is None:
            return False
        identity = session_identity(session)
        if identity is None:
            return False
        granted = await self.acl_for(identity)
        return granted.allows(verb, topic)

    async def acl_for(self, identity: Identity) -> Acl:
        """``identity``'s ACL: the one in hand if it is recent enough, else read again."""
        granted = self._acls.get(identity)
        max_age = self.config.refresh_seconds * STALE_PERIODS
        if granted is not None and time.monotonic() - granted.loaded_at < max_age:
            return granted
        if identity.kind == "bridge":  # no query: the bridge may do anything
            bridge = RoomAccess(default="write", connect=True)
            granted = Acl(identity, acl(identity, bridge, self.topics), True, math.inf)
            self._acls[identity] = granted
            return granted
        return await self._reload(identity)

    async def _reload(self, identity: Identity) -> Acl:
        loading = self._loading.get(identity)
        if loading is None:  # one query at a time per identity, whoever asks
            loading = asyncio.ensure_future(self._load(identity))
            self._loading[identity] = loading
            loading.add_done_callback(lambda _: self._loading.pop(identity, None))
        return await asyncio.shield(loading)

    async def _load(self, identity: Identity) -> Acl:
        try:
            granted: Acl = await database_sync_to_async(load_acl)(
                identity, anonymous_mqtt=self.config.anonymous, topics=self.topics
            )
        except Exception:
            logger.exception("could not read the MQTT access of %s: denied until read", identity)
            granted = Acl.nothing(identity)
        self._acls[identity] = granted
        return granted

    def may_retain(self, topic: str) -> bool:
        """Whether the broker may keep a retained message on ``topic`` (see `RetainPolicy`)."""
        return self._retain is not None and self._retain.allows(topic)

    # amqtt events.

    async def on_broker_post_start(self) -> None:
        self._refresher = asyncio.create_task(self._keep_fresh(), name="embedded-broker-access")

    async def on_broker_message_received(
        self, *, client_id: Any = None, message: Any = None
    ) -> None:
        """A retained publication on a topic not everyone may read is not kept (delivered live).

        amqtt announces a publication before it checks it and stores it; this runs first.
        """
        packet = getattr(message, "publish_packet", None)
        if packet is None or not packet.retain_flag or not message.data:
            return
        if not self.may_retain(message.topic):
            packet.retain_flag = False
            logger.debug("not keeping the retained message of %r on %r", client_id, message.topic)

    async def on_broker_retained_message(
        self, *, client_id: Any = None, retained_message: Any = None
    ) -> None:
        """Should one be stored anyway (a will, say), it is taken out again."""
        if retained_message is None or not retained_message.data:
            return
        if not self.may_retain(retained_message.topic):
            store = self.context.retained_messages
            if store.get(retained_message.topic) is retained_message:
                del store[retained_message.topic]

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    # Keeping up with the database.

    async def _keep_fresh(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("could not read the MQTT access again: retrying")
            await asyncio.sleep(self.config.refresh_seconds)

    async def refresh(self) -> None:
        """Read the access of every connected client again, and apply it to what is kept."""
        sessions = [s for s in self.context.sessions if s.transitions.is_connected()]
        connected = {identity for s in sessions if (identity := session_identity(s)) is not None}
        for identity in connected:
            if identity.kind != "bridge":
                await self._reload(identity)
        for identity in set(self._acls) - connected:
            del self._acls[identity]
        self._retain = await database_sync_to_async(load_retain_policy)(
            anonymous_mqtt=self.config.anonymous, topics=self.topics
        )
        self._forget_retained(list(self.context.retained_messages))
        for session in sessions:
            self._check_will(session)

    def _forget_retained(self, topics: Iterable[str]) -> None:
        store = self.context.retained_messages
        for topic in topics:
            if not self.may_retain(topic):
                store.pop(topic, None)

    def _check_will(self, session: Any) -> None:
        """A will its client may no longer publish is dropped; one not to keep, not kept."""
        if not session.will_flag or not session.will_topic:
            return
        identity = session_identity(session)
        if identity is not None and identity.kind == "bridge":
            return
        granted = self._acls.get(identity) if identity is not None else None
        if granted is None or not granted.allows("publish", session.will_topic):
            session.will_flag = False
        elif session.will_retain and not self.may_retain(session.will_topic):
            session.will_retain = False
