"""Mosquitto's dynamic security plugin kept in step with the gateway's devices and grants.

With ``MQTT_AUTH=dynsec`` the bridge worker is the plugin's administrator (its MQTT user is the
admin that ``mosquitto_ctrl dynsec init`` made). It writes, through the plugin's documented
control topic ``$CONTROL/dynamic-security/v1``:

- the default access: nothing is allowed that no role allows (receiving included, so a client
  that kept a subscription after losing access still gets nothing);
- a role per device (``gw-device-<name>``), one for anonymous clients (``gw-anonymous``, the
  anonymous group's) and one for the bridge, each holding the ACL of `gateway.mqtt_acl.acl`;
- a client per registered device: enabled while the device is active, disabled (which
  disconnects it) once it is revoked, deleted once the device is.

It compares what the broker has with what the gateway decides and sends only the difference, so
several workers may run it. The plugin disconnects the clients of a role whose ACL changes;
they reconnect under the new rules. A device's secret reaches the broker once, when it is set
(`push_secret`): the gateway keeps only its hash.
"""

import asyncio
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Count, Max

from bridges.client import backoff_delay
from bridges.conf import MqttSettings
from gateway import metrics
from gateway.access import mqtt_access, mqtt_identity
from gateway.devices import SecretNotDeliveredError
from gateway.jsonutil import dumps, parse_json
from gateway.models import Device, RoomGrant, RoomPolicy
from gateway.mqtt_acl import AclEntry, Identity, RoomTopics, acl

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "gw-device-"
ANONYMOUS_ROLE = ANONYMOUS_GROUP = "gw-anonymous"
BRIDGE_ROLE = "gw-bridge"
FULL_SYNC_SECONDS = 60.0  # a full comparison even when nothing seems to have changed
REPLY_TIMEOUT = 10.0
_ACL_TYPES = {
    "publish": "publishClientSend",
    "receive": "publishClientReceive",
    "subscribe": "subscribePattern",
}
DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


class DynsecError(Exception):
    """The plugin answered a command with an error (``command``, ``error``)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynamic security refused {command}: {error}")
        self.command = command
        self.error = error


class BridgeRoleAddedError(Exception):
    """The bridge was given its role, which disconnects it: connect again (``changes`` made)."""

    def __init__(self, changes: int) -> None:
        super().__init__(f"{changes} changes, the bridge's role among them")
        self.changes = changes


def role_acls(entries: Iterable[AclEntry]) -> dict[tuple[str, str], tuple[int, bool]]:
    """A role's ACL as the plugin keeps it: (acltype, topic) -> (priority, allow).

    Mosquitto 2.0 checks a shared subscription's whole filter (``$share/<group>/...``), where
    the decision looks at the filter inside: each subscribe entry gets a ``$share/+/`` twin.
    """
    found: dict[tuple[str, str], tuple[int, bool]] = {}
    for entry in entries:
        key = (_ACL_TYPES[entry.action], entry.topic)
        found.setdefault(key, (entry.priority, entry.allow))  # highest priority first
        if entry.action == "subscribe" and not entry.topic.startswith("$"):
            found.setdefault(("subscribePattern", f"$share/+/{entry.topic}"), found[key])
    return found


@dataclass
class Wanted:
    """What the broker should hold: roles' ACLs, devices' roles and whether they are enabled."""

    roles: dict[str, dict[tuple[str, str], tuple[int, bool]]] = field(default_factory=dict)
    devices: dict[str, bool] = field(default_factory=dict)  # name -> enabled


def device_role(name: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{name}"


def wanted_state(topics: RoomTopics, *, bridge_username: str, anonymous_mqtt: bool) -> Wanted:
    """What the gateway decides, for every identity (reads the database)."""
    wanted = Wanted()
    bridge = mqtt_identity(bridge_username, bridge_username=bridge_username)
    wanted.roles[BRIDGE_ROLE] = role_acls(
        acl(bridge, mqtt_access(bridge, anonymous_mqtt=False), topics)
    )
    anonymous = Identity.anonymous()
    wanted.roles[ANONYMOUS_ROLE] = role_acls(
        acl(anonymous, mqtt_access(anonymous, anonymous_mqtt=anonymous_mqtt), topics)
    )
    for name, active in Device.objects.values_list("name", "is_active"):
        if name == bridge_username:
            logger.warning(
                "device %r has the bridge's user name: it is not given to the broker", name
            )
            continue
        wanted.devices[name] = active
        identity = Identity("device", name)
        entries = acl(identity, mqtt_access(identity, anonymous_mqtt=anonymous_mqtt), topics)
        wanted.roles[device_role(name)] = role_acls(entries)
    return wanted


def fingerprint() -> tuple[Any, ...]:
    """A cheap stamp of everything the decisions depend on: it changes when any of it does."""
    stamps: list[Any] = []
    for model in (Device, RoomGrant, RoomPolicy):
        found = model.objects.aggregate(n=Count("pk"), at=Max("updated_at"))
        stamps.extend((found["n"], found["at"]))
    through = Device.groups.through.objects.aggregate(n=Count("pk"), last=Max("pk"))
    stamps.extend((through["n"], through["last"]))
    return tuple(stamps)


class DynsecAdmin:
    """One connection to the broker as the plugin's administrator."""

    def __init__(self, mqtt: MqttSettings) -> None:
        self.mqtt = mqtt
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "DynsecAdmin":
        tls = None
        if self.mqtt.tls:
            tls = ssl.create_default_context(cafile=self.mqtt.ca_certs)
            if self.mqtt.certfile:
                tls.load_cert_chain(self.mqtt.certfile, self.mqtt.keyfile)
        self._client = aiomqtt.Client(
            self.mqtt.host,
            self.mqtt.port,
            username=self.mqtt.username,
            password=self.mqtt.password,
            identifier=f"{self.mqtt.client_id}-dynsec-{secrets.token_hex(3)}",
            tls_context=tls,
            timeout=REPLY_TIMEOUT,
        )
        await self._client.__aenter__()
        await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        self._reader = asyncio.create_task(self._read(), name="dynsec-replies")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for waiting in self._waiting.values():
            waiting.cancel()
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            try:
                body = parse_json(bytes(message.payload).decode())
                replies = body.get("responses", []) if isinstance(body, dict) else []
            except (ValueError, UnicodeDecodeError):
                logger.warning("dynamic security sent a reply that is not JSON")
                continue
            for reply in replies:
                # Every administrator gets every reply: keep only ours.
                waiting = self._waiting.pop(str(reply.get("correlationData")), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)

    async def send(self, command: dict[str, Any]) -> None:
        """Send one command without waiting for its reply."""
        assert self._client is not None
        await self._client.publish(CONTROL_TOPIC, dumps({"commands": [command]}).encode())

    async def run(
        self, commands: list[dict[str, Any]], *, tolerate: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Send ``commands`` in one request; their replies' ``data``, in order.

        Raises:
            DynsecError: a command failed with an error not in ``tolerate``.
        """
        if not commands:
            return []
        assert self._client is not None
        loop = asyncio.get_running_loop()
        futures = []
        for command in commands:
            key = uuid.uuid4().hex
            command["correlationData"] = key
            self._waiting[key] = future = loop.create_future()
            futures.append(future)
        await self._client.publish(CONTROL_TOPIC, dumps({"commands": commands}).encode(), qos=1)
        try:
            replies = await asyncio.wait_for(asyncio.gather(*futures), REPLY_TIMEOUT)
        finally:
            for command in commands:
                self._waiting.pop(command["correlationData"], None)
        for command, reply in zip(commands, replies, strict=True):
            error = reply.get("error")
            if error and not any(text in str(error) for text in tolerate):
                raise DynsecError(command["command"], str(error))
        return [reply.get("data") or {} for reply in replies]


async def read_broker(admin: DynsecAdmin) -> list[dict[str, Any]]:
    """What the plugin holds now: roles, clients, groups, default access, anonymous group.

    Read before the database, so that a device made in between (its client created by
    `push_secret`) is in the database's answer, and not taken for one deleted.
    """
    return await admin.run(
        [
            {"command": "listRoles", "verbose": True, "count": -1},
            {"command": "listClients", "verbose": True, "count": -1},
            {"command": "listGroups", "verbose": True, "count": -1},
            {"command": "getDefaultACLAccess"},
            {"command": "getAnonymousGroup"},
        ]
    )


async def apply(
    admin: DynsecAdmin, have: list[dict[str, Any]], wanted: Wanted, *, bridge_username: str
) -> int:
    """Bring the broker from ``have`` (`read_broker`) to ``wanted``, sending only what differs;
    the number of changes."""
    roles_data, clients_data, groups_data, default_data, anonymous_data = have
    have_roles = {
        role["rolename"]: {
            (a["acltype"], a["topic"]): (int(a.get("priority", 0)), bool(a["allow"]))
            for a in role.get("acls", [])
        }
        for role in roles_data.get("roles", [])
    }
    have_clients = {c["username"]: c for c in clients_data.get("clients", [])}
    have_groups = {g["groupname"]: g for g in groups_data.get("groups", [])}
    have_default = {a["acltype"]: bool(a["allow"]) for a in default_data.get("acls", [])}
    roles = _role_changes(have_roles, wanted.roles)
    if have_default != DEFAULT_ACCESS:
        acls = [{"acltype": kind, "allow": allow} for kind, allow in DEFAULT_ACCESS.items()]
        roles.append({"command": "setDefaultACLAccess", "acls": acls})
    clients = _client_changes(have_clients, have_groups, wanted, bridge_username)
    if anonymous_data.get("group", {}).get("groupname") != ANONYMOUS_GROUP:
        clients.append({"command": "setAnonymousGroup", "groupname": ANONYMOUS_GROUP})
    stale = [
        {"command": "deleteRole", "rolename": name}
        for name in have_roles
        if name.startswith(DEVICE_ROLE_PREFIX) and name not in wanted.roles
    ]
    # Disabling revoked devices first: a failure further on must not hold a revocation back.
    disable = [c for c in clients if c["command"] in ("disableClient", "deleteClient")]
    clients = [c for c in clients if c not in disable]
    # Another worker may be applying the same change: what it did first is no failure.
    tolerate = ("already exists", "already", "not found")
    for batch in (disable, roles, clients, stale):
        await admin.run(batch, tolerate=tolerate)
    changes = len(disable) + len(roles) + len(clients) + len(stale)
    bridge = have_clients.get(bridge_username)
    if bridge is not None and BRIDGE_ROLE not in _roles_of(bridge):
        # The plugin disconnects the clients whose roles change: this very connection and
        # the bridge's. Sent last, with no reply awaited; both connect again at once.
        command = {"command": "addClientRole", "username": bridge_username, "rolename": BRIDGE_ROLE}
        await admin.send(command)
        raise BridgeRoleAddedError(changes + 1)
    return changes


def _role_changes(
    have: dict[str, dict[tuple[str, str], tuple[int, bool]]],
    wanted: dict[str, dict[tuple[str, str], tuple[int, bool]]],
) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = []
    for name, acls in wanted.items():
        current = have.get(name)
        if current is None:
            commands.append({"command": "createRole", "rolename": name})
            current = {}
        for (kind, topic), value in current.items():
            if acls.get((kind, topic)) != value:
                commands.append(
                    {"command": "removeRoleACL", "rolename": name, "acltype": kind, "topic": topic}
                )
        for (kind, topic), (priority, allow) in acls.items():
            if current.get((kind, topic)) != (priority, allow):
                commands.append(
                    {
                        "command": "addRoleACL",
                        "rolename": name,
                        "acltype": kind,
                        "topic": topic,
                        "priority": priority,
                        "allow": allow,
                    }
                )
    return commands


def _client_changes(
    have: dict[str, dict[str, Any]],
    groups: dict[str, dict[str, Any]],
    wanted: Wanted,
    bridge_username: str,
) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = []
    group = groups.get(ANONYMOUS_GROUP)
    if group is None:
        commands.append({"command": "createGroup", "groupname": ANONYMOUS_GROUP})
    if group is None or ANONYMOUS_ROLE not in _roles_of(group):
        commands.append(
            {"command": "addGroupRole", "groupname": ANONYMOUS_GROUP, "rolename": ANONYMOUS_ROLE}
        )
    for name, enabled in wanted.devices.items():
        role = device_role(name)
        client = have.get(name)
        if client is None:
            # The gateway keeps only a hash of the secret: the client is made with one nobody
            # knows, and works once the device's secret is set again (add_device --rotate).
            logger.warning(
                "device %s was not on the broker: rotate its secret to let it connect", name
            )
            commands.append(
                {
                    "command": "createClient",
                    "username": name,
                    "password": secrets.token_urlsafe(32),
                    "roles": [{"rolename": role}],
                }
            )
            client = {"roles": [{"rolename": role}], "disabled": False}
        elif role not in _roles_of(client):
            commands.append({"command": "addClientRole", "username": name, "rolename": role})
        if bool(client.get("disabled")) == enabled:
            # Disabling a client also disconnects it.
            command = "enableClient" if enabled else "disableClient"
            commands.append({"command": command, "username": name})
    for name, client in have.items():
        ours = any(role.startswith(DEVICE_ROLE_PREFIX) for role in _roles_of(client))
        if ours and name not in wanted.devices:
            commands.append({"command": "deleteClient", "username": name})
    return commands


def _roles_of(holder: dict[str, Any]) -> set[str]:
    return {role["rolename"] for role in holder.get("roles", [])}


async def keep_in_step(
    mqtt: MqttSettings, topics: RoomTopics, *, anonymous_mqtt: bool, interval: float
) -> None:
    """Keep the broker's dynamic security in step with the gateway, until cancelled."""
    assert mqtt.username is not None, "checked at start-up"
    attempt, in_step = 0, False
    while True:
        try:
            async with DynsecAdmin(mqtt) as admin:
                last: tuple[Any, ...] | None = None
                last_full = 0.0
                while True:
                    stamp = await database_sync_to_async(fingerprint)()
                    now = time.monotonic()
                    if stamp != last or now - last_full > FULL_SYNC_SECONDS:
                        have = await read_broker(admin)
                        wanted = await database_sync_to_async(wanted_state)(
                            topics, bridge_username=mqtt.username, anonymous_mqtt=anonymous_mqtt
                        )
                        changes = await apply(admin, have, wanted, bridge_username=mqtt.username)
                        _applied(changes, first=not in_step)
                        in_step, attempt = True, 0
                        last, last_full = stamp, now
                    await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except BridgeRoleAddedError as exc:
            _applied(exc.changes, first=False)
        except Exception:
            logger.exception("keeping the broker's dynamic security in step failed; retrying")
            metrics.inc("dynsec_changes", "failed")
            await asyncio.sleep(backoff_delay(attempt))
            attempt += 1


def _applied(changes: int, *, first: bool) -> None:
    if changes:
        metrics.inc("dynsec_changes", "applied", changes)
    if changes or first:
        logger.info("dynamic security in step with the gateway (%d changes)", changes)


async def _push_secret(mqtt: MqttSettings, name: str, secret: str) -> None:
    async with DynsecAdmin(mqtt) as admin:
        role = device_role(name)
        await admin.run([{"command": "createRole", "rolename": role}], tolerate=("already",))
        client = {"username": name, "password": secret, "roles": [{"rolename": role}]}
        await admin.run([{"command": "createClient", **client}], tolerate=("already",))
        # When the client was there already (a rotation), the new secret replaces the old.
        await admin.run([{"command": "setClientPassword", "username": name, "password": secret}])


def push_secret(name: str, secret: str, **_: Any) -> None:
    """Give the broker device ``name``'s new secret (a receiver of `gateway.devices.secret_set`).

    The device's ACL follows from the bridge worker's next comparison, within seconds.
    """
    mqtt: MqttSettings | None = settings.MQTT
    if mqtt is None:
        return
    try:
        asyncio.run(_push_secret(mqtt, name, secret))
    except Exception as exc:
        logger.warning("the broker has not got device %s's secret: %s", name, exc)
        raise SecretNotDeliveredError(name) from exc
