"""Django settings for the gateway, all read from the environment once, at start-up.

Every variable is documented in the README. A value that is wrong stops start-up with
`ImproperlyConfigured` naming the variable.
"""

import logging
import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from bridges.conf import MqttSettings
from bridges.rules import RuleSet, load_rules
from gateway.conf import GatewaySettings
from gateway.shared import RedisTarget, parse_sentinels, parse_shards
from protocols.client_address import parse_proxies

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
T = TypeVar("T")


def _read(name: str, read: Any, default: T) -> T:
    try:
        return read(name, default=default)  # type: ignore[no-any-return]
    except (ValueError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"{name} is invalid: {exc}") from exc


def _int_list(name: str, default: list[int]) -> list[int]:
    return env.list(name, cast=int, default=default)  # type: ignore[no-any-return]


DEBUG: bool = _read("DJANGO_DEBUG", env.bool, False)

SECRET_KEY: str = _read("DJANGO_SECRET_KEY", env.str, "")
if not SECRET_KEY:
    # A key per process start keeps a fresh checkout runnable; sessions then end on restart,
    # and processes behind one load balancer must share DJANGO_SECRET_KEY.
    SECRET_KEY = secrets.token_urlsafe(50)
    logging.getLogger("config").warning(
        "DJANGO_SECRET_KEY is not set: using a random key; sessions end when the process stops"
    )

ALLOWED_HOSTS: list[str] = _read(
    "DJANGO_ALLOWED_HOSTS", env.list, ["localhost", "127.0.0.1", "[::1]"]
)
if not DEBUG and "*" in ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS='*' is refused in production: it disables the WebSocket Origin"
        " check; list the host names"
    )

INSTALLED_APPS = [
    # bridges before channels and daphne before staticfiles: their commands win.
    "bridges",
    "daphne",
    "channels",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "gateway",
    "protocols",
    "config",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "protocols.middleware.ContentSecurityPolicyMiddleware",
    "protocols.middleware.LoginThrottleMiddleware",
]
# Messages (a new token or device secret, shown once) stay on the server, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# Behind HTTPS (DJANGO_HTTPS=1): cookies only over HTTPS, and browsers told to keep to it.
HTTPS: bool = _read("DJANGO_HTTPS", env.bool, False)
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
# A TLS proxy in front says so in X-Forwarded-Proto (DJANGO_SECURE_PROXY_SSL_HEADER=1).
if _read("DJANGO_SECURE_PROXY_SSL_HEADER", env.bool, False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS: list[str] = _read("DJANGO_CSRF_TRUSTED_ORIGINS", env.list, [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not _origin.startswith(("http://", "https://")):
        raise ImproperlyConfigured(
            f"DJANGO_CSRF_TRUSTED_ORIGINS: {_origin!r} must start with https:// or http://"
        )

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database = cast(
    dict[str, Any], _read("DATABASE_URL", env.db_url, f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
)
DATABASES = {"default": _database}
if _database["ENGINE"].endswith("sqlite3"):
    # Tests on a file, not SQLite's shared in-memory cache: there, a second thread's write
    # fails at once with "table is locked" instead of waiting its turn.
    _database["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"gateway-test-{os.getpid()}.sqlite3")
    }
    # WAL: pages read while the bridge writes history. NORMAL: a commit is not an fsync (a
    # power cut may lose the last moments of history, never corrupt it). Connections stay open
    # instead of being reopened for every write.
    _database.setdefault("OPTIONS", {}).setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    _database["CONN_MAX_AGE"] = None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL: str | None = _read("REDIS_URL", env.str, None) or None
CHANNEL_CAPACITY: int = _read("CHANNEL_CAPACITY", env.int, 1000)
if not 10 <= CHANNEL_CAPACITY <= 1_000_000:
    raise ImproperlyConfigured(f"CHANNEL_CAPACITY={CHANNEL_CAPACITY} is out of range (10-1000000)")
# Seconds a process's membership of a room lasts on the transport unless renewed (each process
# renews its rooms every quarter of it; a crashed process's lapse).
CHANNEL_GROUP_EXPIRY: int = _read("CHANNEL_GROUP_EXPIRY", env.int, 86400)
if not 4 <= CHANNEL_GROUP_EXPIRY <= 30 * 86400:
    raise ImproperlyConfigured(
        f"CHANNEL_GROUP_EXPIRY={CHANNEL_GROUP_EXPIRY} is out of range (4-2592000 seconds)"
    )
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL!r} is invalid: use redis://host:port/db or rediss://"
    )
# Sentinels that name the master: the gateway follows it through a failover.
_sentinels: str = _read("REDIS_SENTINELS", env.str, "").strip()
try:
    REDIS_SENTINELS = parse_sentinels(_sentinels) if _sentinels else ()
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_SENTINELS is invalid: {exc}") from exc
REDIS_SENTINEL_MASTER: str = _read("REDIS_SENTINEL_MASTER", env.str, "").strip()
REDIS_SENTINEL_PASSWORD: str = _read("REDIS_SENTINEL_PASSWORD", env.str, "")
if bool(REDIS_SENTINELS) != bool(REDIS_SENTINEL_MASTER):
    raise ImproperlyConfigured(
        "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: the Sentinels' addresses "
        "(host:port,...) and the name they monitor the master under (e.g. mymaster)"
    )
if REDIS_SENTINELS and REDIS_URL and urlsplit(REDIS_URL).hostname:
    raise ImproperlyConfigured(
        f"REDIS_URL names a host ({urlsplit(REDIS_URL).hostname}), but with REDIS_SENTINELS "
        "the Sentinels name the master: give only the scheme, password and database, e.g. "
        "REDIS_URL=rediss://:password@/0"
    )
if REDIS_SENTINELS and REDIS_URL and REDIS_URL.startswith("unix://"):
    raise ImproperlyConfigured("REDIS_URL=unix:// cannot go with REDIS_SENTINELS")
# The shared Redis's target, and whether the bridge waits for a replica before acknowledging
# a QoS 1 message (milliseconds; 0 turns it off).
try:
    REDIS_SHARDS = parse_shards(_read("REDIS_SHARDS", env.str, ""), sentinels=bool(REDIS_SENTINELS))
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_SHARDS is invalid: {exc}") from exc
if REDIS_SHARDS and not (REDIS_URL or REDIS_SENTINELS):
    raise ImproperlyConfigured(
        "REDIS_SHARDS adds shards to a Redis: set REDIS_URL (or REDIS_SENTINELS) too"
    )
REDIS_REPLICA_WAIT_MS: int = _read("REDIS_REPLICA_WAIT_MS", env.int, 1000)
if not 0 <= REDIS_REPLICA_WAIT_MS <= 60_000:
    raise ImproperlyConfigured(
        f"REDIS_REPLICA_WAIT_MS={REDIS_REPLICA_WAIT_MS} is out of range (0-60000; 0 turns it off)"
    )
# The pub/sub channel layer once carried rooms; the gateway's own transport does now, and the
# channel layer carries only what the bridge worker publishes.
if _read("CHANNEL_LAYER", env.str, "") not in ("", "core"):
    raise ImproperlyConfigured(
        "CHANNEL_LAYER is retired: rooms travel on the gateway's own transport in Redis. "
        "Remove the setting (see the README's upgrade notes)."
    )
if REDIS_SENTINELS:
    _redis: RedisTarget | None = RedisTarget(
        url=REDIS_URL or "redis://",
        sentinels=REDIS_SENTINELS,
        master=REDIS_SENTINEL_MASTER,
        sentinel_password=REDIS_SENTINEL_PASSWORD or None,
    )
else:
    _redis = RedisTarget(url=REDIS_URL) if REDIS_URL else None
if _redis is not None:
    try:
        _layer_host = _redis.layer_host()
    except ValueError as exc:
        raise ImproperlyConfigured(f"REDIS_URL is invalid: {exc}") from exc
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis as it ships: the bridge worker's channel, and Channels' own needs.
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [_layer_host],
                # Messages waiting for the bridge worker before new ones are refused (the
                # sender is told, and the drop counted): seconds of slack, bounded memory.
                "capacity": CHANNEL_CAPACITY,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": CHANNEL_CAPACITY},
        }
    }

GATEWAY = GatewaySettings(
    gateway_id=_read("GATEWAY_ID", env.str, "gateway"),
    max_frame_bytes=_read("GATEWAY_MAX_FRAME_BYTES", env.int, 64 * 1024),
    max_payload_bytes=_read("GATEWAY_MAX_PAYLOAD_BYTES", env.int, 64 * 1024),
    retained_max_topics=_read("RETAINED_MAX_TOPICS", env.int, 100),
    history_max_messages=_read("HISTORY_MAX_MESSAGES", env.int, 10_000),
    history_max_age=timedelta(days=_read("HISTORY_MAX_AGE_DAYS", env.float, 30.0)),
    history_room_bytes=_read("HISTORY_ROOM_BYTES", env.int, 64 << 20),
    history_window_bytes=_read("HISTORY_WINDOW_BYTES", env.int, 4 << 20),
    presence_ttl=_read("PRESENCE_TTL_SECONDS", env.float, 30.0),
    presence_list_max=_read("GATEWAY_PRESENCE_LIST_MAX", env.int, 100),
    presence_interval=_read("GATEWAY_PRESENCE_INTERVAL", env.float, 0.25),
    presence_count_interval=_read("GATEWAY_PRESENCE_COUNT_INTERVAL", env.float, 2.0),
    gc_thresholds=tuple(_read("GATEWAY_GC_THRESHOLDS", _int_list, [50_000, 20, 10])),
)

# Rooms a gateway holds at most, and how long a room with no message and nobody present is kept.
GATEWAY_MAX_ROOMS: int = _read("GATEWAY_MAX_ROOMS", env.int, 100_000)
if not 1 <= GATEWAY_MAX_ROOMS <= 10_000_000:
    raise ImproperlyConfigured(
        f"GATEWAY_MAX_ROOMS={GATEWAY_MAX_ROOMS} is out of range (1-10000000)"
    )
GATEWAY_ROOM_IDLE_SECONDS: float = _read("GATEWAY_ROOM_IDLE_SECONDS", env.float, 30 * 86400.0)
if not 1 <= GATEWAY_ROOM_IDLE_SECONDS <= 36_500 * 86400:  # also refuses nan
    raise ImproperlyConfigured(
        f"GATEWAY_ROOM_IDLE_SECONDS={GATEWAY_ROOM_IDLE_SECONDS} is out of range (1-3153600000)"
    )

# Members a room's presence lists at most; past that, newcomers are in the room but not listed.
GATEWAY_PRESENCE_MAX_PER_ROOM: int = _read("GATEWAY_PRESENCE_MAX_PER_ROOM", env.int, 10_000)
if not 1 <= GATEWAY_PRESENCE_MAX_PER_ROOM <= 1_000_000:
    raise ImproperlyConfigured(
        f"GATEWAY_PRESENCE_MAX_PER_ROOM={GATEWAY_PRESENCE_MAX_PER_ROOM} is out of range (1-1000000)"
    )

# HTTP API reads without a token or session: requests per second per client address (burst).
API_ANONYMOUS_RATE: float = _read("GATEWAY_API_ANONYMOUS_RATE", env.float, 5.0)
API_ANONYMOUS_BURST: int = _read("GATEWAY_API_ANONYMOUS_BURST", env.int, 20)
if not 0.1 <= API_ANONYMOUS_RATE <= 100_000:  # also refuses nan
    raise ImproperlyConfigured(
        f"GATEWAY_API_ANONYMOUS_RATE={API_ANONYMOUS_RATE} is out of range (0.1-100000 per second)"
    )
if not 1 <= API_ANONYMOUS_BURST <= 1_000_000:
    raise ImproperlyConfigured(
        f"GATEWAY_API_ANONYMOUS_BURST={API_ANONYMOUS_BURST} is out of range (1-1000000)"
    )

# Abuse limits per WebSocket: frames per second (burst), and sockets per user.
WS_RATE: float = _read("GATEWAY_WS_RATE", env.float, 20.0)
WS_BURST: int = _read("GATEWAY_WS_BURST", env.int, 40)
WS_MAX_PER_USER: int = _read("GATEWAY_WS_MAX_PER_USER", env.int, 20)
WS_MAX_ANONYMOUS_PER_ADDRESS: int = _read("GATEWAY_WS_MAX_ANONYMOUS_PER_ADDRESS", env.int, 100)
WS_MAX_ANONYMOUS: int = _read("GATEWAY_WS_MAX_ANONYMOUS", env.int, 10_000)
for _name, _value in (
    ("GATEWAY_WS_MAX_ANONYMOUS_PER_ADDRESS", WS_MAX_ANONYMOUS_PER_ADDRESS),
    ("GATEWAY_WS_MAX_ANONYMOUS", WS_MAX_ANONYMOUS),
):
    if not 1 <= _value <= 1_000_000:
        raise ImproperlyConfigured(f"{_name}={_value} is out of range (1-1000000)")
# WebSocket handshakes one daphne process works on at once; more are asked to come back
# (`protocols.admission`).
WS_HANDSHAKES: int = _read("GATEWAY_WS_HANDSHAKES", env.int, 64)
if not 1 <= WS_HANDSHAKES <= 100_000:
    raise ImproperlyConfigured(f"GATEWAY_WS_HANDSHAKES={WS_HANDSHAKES} is out of range (1-100000)")
# Lets /metrics and /readyz's detail be read from elsewhere than this machine.
OPS_TOKEN: str | None = _read("GATEWAY_OPS_TOKEN", env.str, "") or None
if OPS_TOKEN is not None and len(OPS_TOKEN) < 16:
    raise ImproperlyConfigured("GATEWAY_OPS_TOKEN is too short: use at least 16 characters")
try:
    TRUSTED_PROXIES = parse_proxies(_read("GATEWAY_TRUSTED_PROXIES", env.list, []))
except ValueError as _exc:
    raise ImproperlyConfigured(f"GATEWAY_TRUSTED_PROXIES: {_exc}") from _exc
if not 0.1 <= WS_RATE <= 10_000:  # also refuses nan
    raise ImproperlyConfigured(f"GATEWAY_WS_RATE={WS_RATE} is out of range (0.1-10000 per second)")
if not 1 <= WS_BURST <= 100_000:
    raise ImproperlyConfigured(f"GATEWAY_WS_BURST={WS_BURST} is out of range (1-100000)")
if not 1 <= WS_MAX_PER_USER <= 100_000:
    raise ImproperlyConfigured(
        f"GATEWAY_WS_MAX_PER_USER={WS_MAX_PER_USER} is out of range (1-100000)"
    )

# The bridge's broker; None means "not configured" (rungateway then embeds a broker).
MQTT: MqttSettings | None = MqttSettings.from_env(
    url=_read("MQTT_URL", env.str, "") or None,
    protocol=_read("MQTT_PROTOCOL", env.str, "5"),
    gateway_id=GATEWAY.gateway_id,
    client_id=_read("MQTT_CLIENT_ID", env.str, "") or None,
)

# Seconds a room message may wait for the broker's acknowledgement before its sender is told.
BRIDGE_PUBLISH_TIMEOUT: float = _read("BRIDGE_PUBLISH_TIMEOUT", env.float, 10.0)
if not 0.1 <= BRIDGE_PUBLISH_TIMEOUT <= 3600:
    raise ImproperlyConfigured(
        f"BRIDGE_PUBLISH_TIMEOUT={BRIDGE_PUBLISH_TIMEOUT} is out of range (0.1-3600 seconds)"
    )

# Topic <-> room rules of the bridge: BRIDGE_RULES is inline JSON or a JSON file's path.
BRIDGE_RULES: RuleSet = load_rules(_read("BRIDGE_RULES", env.str, "") or None)

# The MQTT half of the permission model (gateway/mqtt_acl.py).
# MQTT_ANONYMOUS: "none" (anonymous MQTT clients get nothing) or "public" (public rooms' anonymous
# level, as on the WebSocket). Unset: "none", but rungateway's embedded broker opens public rooms.
MQTT_ANONYMOUS: str | None = _read("MQTT_ANONYMOUS", env.str, "") or None
if MQTT_ANONYMOUS not in (None, "none", "public"):
    raise ImproperlyConfigured(f"MQTT_ANONYMOUS={MQTT_ANONYMOUS!r} is invalid: use none or public")
# MQTT_AUTH: "none" (the broker is configured by other means) or "dynsec" (the bridge keeps
# Mosquitto's dynamic security plugin in step with the gateway's devices and grants).
MQTT_AUTH: str = _read("MQTT_AUTH", env.str, "none")
if MQTT_AUTH not in ("none", "dynsec"):
    raise ImproperlyConfigured(f"MQTT_AUTH={MQTT_AUTH!r} is invalid: use none or dynsec")
if MQTT_AUTH == "dynsec" and MQTT is not None and not (MQTT.username and MQTT.password):
    raise ImproperlyConfigured(
        "MQTT_AUTH=dynsec needs MQTT_URL with the dynamic security admin's user name and password"
    )
MQTT_AUTH_SYNC_SECONDS: float = _read("MQTT_AUTH_SYNC_SECONDS", env.float, 2.0)
if not 0.1 <= MQTT_AUTH_SYNC_SECONDS <= 3600:
    raise ImproperlyConfigured(
        f"MQTT_AUTH_SYNC_SECONDS={MQTT_AUTH_SYNC_SECONDS} is out of range (0.1-3600 seconds)"
    )
# The shared secret brokers send to the gateway's HTTP authentication and authorization hooks
# (/mqtt/...); unset, the hooks answer 404.
MQTT_HOOK_TOKEN: str | None = _read("MQTT_HOOK_TOKEN", env.str, "") or None
if MQTT_HOOK_TOKEN is not None and len(MQTT_HOOK_TOKEN) < 16:
    raise ImproperlyConfigured("MQTT_HOOK_TOKEN is too short: use at least 16 characters")
# Seconds between checks that an open WebSocket may still read its room (revocation).
ACCESS_RECHECK_SECONDS: float = _read("GATEWAY_ACCESS_RECHECK_SECONDS", env.float, 5.0)
if not 0.1 <= ACCESS_RECHECK_SECONDS <= 3600:
    raise ImproperlyConfigured(
        f"GATEWAY_ACCESS_RECHECK_SECONDS={ACCESS_RECHECK_SECONDS} is out of range (0.1-3600)"
    )

# daphne's own frame limit (runserver); the same limit the room consumer enforces.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = GATEWAY.max_frame_bytes
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = GATEWAY.max_frame_bytes

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": _read("LOG_LEVEL", env.str, "INFO").upper()},
    "loggers": {
        "django": {"level": "INFO"},
    },
}
