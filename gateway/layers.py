"""What the gateway needs to know about its channel layer, in one place."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

from channels.layers import BaseChannelLayer
from channels_redis.core import RedisChannelLayer

T = TypeVar("T")


def uses_redis(layer: BaseChannelLayer | None) -> bool:
    """Whether ``layer`` is the Redis channel layer (shared by processes), not the in-memory one."""
    return isinstance(layer, RedisChannelLayer)


def per_layer(cache: dict[tuple[int, int], T], layer: BaseChannelLayer, make: Callable[[], T]) -> T:
    """The object ``make`` builds for ``layer`` and the running event loop, built once.

    Redis connections belong to the loop that opened them, so helpers that use the layer's
    connections are kept per layer and per loop.
    """
    key = (id(layer), id(asyncio.get_running_loop()))
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found
