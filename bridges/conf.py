"""How the bridge reaches its broker: ``MQTT_URL`` and friends, parsed once into a frozen value."""

import re
import socket
from dataclasses import dataclass, replace
from typing import Literal, cast, get_args
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

Protocol = Literal["5", "3.1.1"]
_QUERY_OPTIONS = ("ca", "cert", "key", "keepalive")
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
HOSTNAME_PLACEHOLDER = "{hostname}"


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """A broker address and the client's identity on it.

    Attributes:
        host, port: the broker (``mqtt://`` defaults to 1883, ``mqtts://`` to 8883).
        tls: whether to speak TLS (``mqtts://``).
        username, password: from the URL's user part, if any.
        ca_certs, certfile, keyfile: TLS files from the URL's ``ca``, ``cert``, ``key`` options.
        keepalive: seconds between pings (``keepalive`` option, default 30).
        protocol: ``"5"`` (default) or ``"3.1.1"`` (``MQTT_PROTOCOL``).
        client_id: the bridge's MQTT client id, derived from ``GATEWAY_ID``.
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30
    protocol: Protocol = "5"
    client_id: str = "gateway-bridge"

    @classmethod
    def from_env(
        cls, *, url: str | None, protocol: str, gateway_id: str, client_id: str | None = None
    ) -> "MqttSettings | None":
        """Parse ``MQTT_URL``, ``MQTT_PROTOCOL`` and ``MQTT_CLIENT_ID``; None when unset.

        ``{hostname}`` in ``MQTT_CLIENT_ID`` is this machine's (or container's) host name: see
        `expand_client_id`.
        """
        if protocol not in get_args(Protocol):
            raise ImproperlyConfigured(f"MQTT_PROTOCOL={protocol!r} is invalid: use 5 or 3.1.1")
        if client_id is not None:
            client_id = expand_client_id(client_id)
        if url is None:
            return None
        settings = cls.from_url(url, protocol=cast(Protocol, protocol), gateway_id=gateway_id)
        return replace(settings, client_id=client_id) if client_id else settings

    @classmethod
    def from_url(cls, url: str, *, protocol: Protocol = "5", gateway_id: str) -> "MqttSettings":
        """Parse ``mqtt://user:pass@host:1883`` or ``mqtts://host:8883?ca=/path/ca.pem``."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ImproperlyConfigured(f"MQTT_URL is invalid: {exc}") from exc
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ImproperlyConfigured(
                f"MQTT_URL={_redact(url)!r} is invalid: the scheme must be mqtt:// or mqtts://"
            )
        if not parts.hostname:
            raise ImproperlyConfigured(f"MQTT_URL={_redact(url)!r} is invalid: it names no host")
        if parts.path not in ("", "/"):
            raise ImproperlyConfigured(f"MQTT_URL={_redact(url)!r} is invalid: it has a path")
        query = parse_qs(parts.query, strict_parsing=False)
        unknown = sorted(set(query) - set(_QUERY_OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"MQTT_URL has unknown options {unknown}: known are {list(_QUERY_OPTIONS)}"
            )
        option = {key: values[-1] for key, values in query.items()}
        try:
            keepalive = int(option.get("keepalive", "30"))
        except ValueError as exc:
            raise ImproperlyConfigured("MQTT_URL option keepalive must be whole seconds") from exc
        if not 5 <= keepalive <= 3600:
            raise ImproperlyConfigured("MQTT_URL option keepalive must be 5-3600 seconds")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_certs=option.get("ca"),
            certfile=option.get("cert"),
            keyfile=option.get("key"),
            keepalive=keepalive,
            protocol=protocol,
            client_id=f"{gateway_id}-bridge",
        )

    def describe(self) -> str:
        """The broker address without credentials, for logs and errors."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port} (MQTT {self.protocol})"


def expand_client_id(template: str) -> str:
    """``MQTT_CLIENT_ID`` with ``{hostname}`` replaced by this host's name, checked.

    Each replica of a compose service has a host name of its own (its container id), kept
    across a restart of the container, so ``gateway-bridge-{hostname}`` gives every replica its
    own client id, and gives a restarted one its old id (and its session) back. A recreated
    container gets a new host name, so a new id.
    """
    client_id = template
    if HOSTNAME_PLACEHOLDER in template:
        client_id = template.replace(HOSTNAME_PLACEHOLDER, socket.gethostname())
    if not _CLIENT_ID_RE.fullmatch(client_id):
        shown = repr(template)
        if client_id != template:
            shown += f" (here {client_id!r})"
        raise ImproperlyConfigured(
            f"MQTT_CLIENT_ID={shown} is invalid: use 1-64 letters, digits, '_', '.', '-', "
            f"and {HOSTNAME_PLACEHOLDER} for the host name"
        )
    return client_id


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
