"""Settings of the baseline: the tutorial's defaults, a Redis channel layer, no database."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "baseline-benchmark-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "benchmarks.naive.urls"
ASGI_APPLICATION = "benchmarks.naive.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The channel layer as the tutorial configures it: every option left at its default.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
