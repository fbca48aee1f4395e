"""The MQTT decision table every broker adapter is tested against.

One world of rooms, devices and grants (`make_world`), and rows of (who, action, topic,
expected). The pure decision (`gateway.mqtt_acl`) must answer every row as written; so must
Mosquitto with the dynamic security plugin, the HTTP hooks and the embedded broker.

The world, with the default bridge rules and anonymous MQTT open to public rooms:

- ``plant``: private; ``pump-7`` may write, ``panel-1`` may read.
- ``vault``: private; nobody has a grant.
- ``lobby``: public; anonymous clients may read, registered devices may write.
- ``open``: no policy (public, anyone may write).
- ``old-1``: a revoked device that had write on ``plant``.
"""

from dataclasses import dataclass

from gateway.devices import add_device, revoke_device
from gateway.models import RoomPolicy

ANONYMOUS = None  # an MQTT client without a user name


@dataclass(frozen=True)
class Row:
    who: str | None  # a device name, "bridge", or None for anonymous
    action: str  # connect, publish, subscribe, receive
    topic: str
    allow: bool

    def __str__(self) -> str:
        verdict = "allow" if self.allow else "deny"
        return f"{self.who or 'anonymous'}-{self.action}-{self.topic}-{verdict}"


def make_world() -> dict[str, str]:
    """Create the rooms, devices and grants above; return each device's secret."""
    RoomPolicy.objects.create(room="plant", private=True)
    RoomPolicy.objects.create(room="vault", private=True)
    RoomPolicy.objects.create(room="lobby", anonymous="read", authenticated="write")
    secrets: dict[str, str] = {}
    for name, grants in (
        ("pump-7", {"plant": "write"}),
        ("pump-8", {}),
        ("panel-1", {"plant": "read"}),
        ("old-1", {"plant": "write"}),
    ):
        device, secrets[name] = add_device(name, grants)
        if name == "old-1":
            revoke_device(device)
    return secrets


ROWS: tuple[Row, ...] = (
    # connecting
    Row("pump-7", "connect", "", True),
    Row("old-1", "connect", "", False),
    Row("stranger", "connect", "", False),  # not registered
    Row(ANONYMOUS, "connect", "", True),  # anonymous MQTT is open to public rooms here
    # a device writes under its own level, where it may write
    Row("pump-7", "publish", "rooms/plant/pump-7/t", True),
    Row("pump-7", "publish", "rooms/plant/pump-7/status", True),
    Row("pump-7", "publish", "rooms/plant/pump-7", True),
    Row("pump-7", "publish", "rooms/plant/pump-8/t", False),  # another device's level
    Row("pump-7", "publish", "rooms/plant", False),  # no sender level: names nobody
    Row("pump-7", "publish", "rooms/plant/gateway", False),  # the gateway's topic
    Row("pump-7", "publish", "rooms/vault/pump-7/t", False),  # no grant
    Row("pump-7", "publish", "rooms/lobby/pump-7/t", True),  # public: devices may write
    Row("pump-7", "publish", "rooms/open/pump-7/t", True),  # no policy: anyone may write
    Row("pump-7", "publish", "gateways/gateway-bridge/status", False),
    Row("pump-7", "publish", "elsewhere/x", False),  # not a room's topic
    Row("pump-8", "publish", "rooms/plant/pump-8/t", False),  # no grant on a private room
    Row("panel-1", "publish", "rooms/plant/panel-1/t", False),  # read only
    # reading
    Row("panel-1", "subscribe", "rooms/plant/gateway", True),
    Row("panel-1", "subscribe", "rooms/plant/#", True),
    Row("panel-1", "receive", "rooms/plant/gateway", True),
    Row("panel-1", "receive", "rooms/plant/pump-7/t", True),
    Row("panel-1", "subscribe", "rooms/vault/#", False),
    Row("panel-1", "subscribe", "$share/panels/rooms/plant/#", True),  # a shared subscription
    Row("panel-1", "subscribe", "$share/panels/rooms/vault/#", False),
    Row("panel-1", "subscribe", "rooms/vault/gateway", False),
    Row("panel-1", "receive", "rooms/vault/gateway", False),
    Row("panel-1", "subscribe", "gateways/#", False),
    Row("panel-1", "receive", "gateways/gateway-bridge/status", False),
    Row("panel-1", "subscribe", "$CONTROL/dynamic-security/#", False),
    Row("pump-8", "subscribe", "rooms/plant/#", False),
    Row("pump-8", "receive", "rooms/plant/gateway", False),
    Row("pump-8", "subscribe", "rooms/lobby/#", True),
    Row("old-1", "subscribe", "rooms/plant/#", False),
    # anonymous clients
    Row(ANONYMOUS, "subscribe", "rooms/plant/#", False),
    Row(ANONYMOUS, "subscribe", "rooms/plant/gateway", False),
    Row(ANONYMOUS, "receive", "rooms/plant/gateway", False),
    Row(ANONYMOUS, "publish", "rooms/plant/x/t", False),
    Row(ANONYMOUS, "publish", "rooms/plant", False),
    Row(ANONYMOUS, "publish", "rooms/plant/x/status", False),  # presence in a private room
    Row(ANONYMOUS, "publish", "gateways/gateway-bridge/status", False),
    Row(ANONYMOUS, "subscribe", "gateways/#", False),
    Row(ANONYMOUS, "subscribe", "rooms/lobby/#", True),
    Row(ANONYMOUS, "receive", "rooms/lobby/gateway", True),
    Row(ANONYMOUS, "publish", "rooms/lobby/x/t", False),  # read only for anonymous
    Row(ANONYMOUS, "subscribe", "rooms/open/#", True),
    Row(ANONYMOUS, "publish", "rooms/open/sensor-1", True),
    Row(ANONYMOUS, "publish", "rooms/open", True),
    Row(ANONYMOUS, "publish", "rooms/open/pump-7/t", False),  # a registered device's level
    Row(ANONYMOUS, "publish", "rooms/open/gateway", False),
    # the bridge
    Row("bridge", "connect", "", True),
    Row("bridge", "subscribe", "$share/gateway/rooms/#", True),
    Row("bridge", "publish", "rooms/plant/gateway", True),
    Row("bridge", "publish", "gateways/gateway-bridge/status", True),
    Row("bridge", "receive", "rooms/vault/pump-7/t", True),
)
