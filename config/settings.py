"""Django settings for the gateway, all read from the environment once, at start-up.

Every variable is documented in the README. A value that is wrong stops start-up with
`ImproperlyConfigured` naming the variable.
"""

import logging
import secrets
from pathlib import Path
from typing import Any, TypeVar

import environ
from django.core.exceptions import ImproperlyConfigured

from bridges.conf import MqttSettings
from gateway.conf import GatewaySettings

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
T = TypeVar("T")


def _read(name: str, read: Any, default: T) -> T:
    try:
        return read(name, default=default)  # type: ignore[no-any-return]
    except (ValueError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"{name} is invalid: {exc}") from exc


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
]

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

DATABASES = {
    "default": _read("DATABASE_URL", env.db_url, f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL: str | None = _read("REDIS_URL", env.str, None) or None
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(
            f"REDIS_URL={REDIS_URL!r} is invalid: use redis://host:port/db or rediss://"
        )
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

GATEWAY = GatewaySettings(
    gateway_id=_read("GATEWAY_ID", env.str, "gateway"),
    max_frame_bytes=_read("GATEWAY_MAX_FRAME_BYTES", env.int, 64 * 1024),
)

# The bridge's broker; None means "not configured" (rungateway then embeds a broker).
MQTT: MqttSettings | None = MqttSettings.from_env(
    url=_read("MQTT_URL", env.str, "") or None,
    protocol=_read("MQTT_PROTOCOL", env.str, "5"),
    gateway_id=GATEWAY.gateway_id,
)

# daphne's own frame limit (runserver); the same limit the room consumer enforces.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = GATEWAY.max_frame_bytes
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = GATEWAY.max_frame_bytes

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

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
        "amqtt": {"level": "WARNING"},
        "transitions": {"level": "WARNING"},
    },
}
