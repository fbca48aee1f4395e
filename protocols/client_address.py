"""Which address a connection comes from, trusting a proxy's header only from named proxies."""

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """``GATEWAY_TRUSTED_PROXIES``: addresses or networks (``10.0.0.5``, ``10.0.0.0/8``).

    Raises:
        ValueError: naming the entry that is neither.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an address or a network") from exc
    return tuple(networks)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(scope: Mapping[str, Any], proxies: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    address in ``X-Forwarded-For`` that is not a trusted proxy (earlier ones can be forged)."""
    client = scope.get("client") or ("unknown", 0)
    address = str(client[0])
    if not proxies or not _trusted(address, proxies):
        return address
    forwarded = [
        part.strip()
        for name, value in scope.get("headers", ())
        if name.lower() == b"x-forwarded-for"
        for part in value.decode("latin-1").split(",")
    ]
    for hop in reversed(forwarded):
        if hop and not _trusted(hop, proxies):
            return str(hop[:64])
    return address


def request_address(request: Any, proxies: tuple[Network, ...]) -> str:
    """`client_address` of a Django request: from its ASGI scope, or, served by WSGI, from
    ``REMOTE_ADDR``."""
    scope = getattr(request, "scope", None) or {"client": (request.META.get("REMOTE_ADDR"), 0)}
    return client_address(scope, proxies)
