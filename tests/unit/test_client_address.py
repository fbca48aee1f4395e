"""The client address the socket caps count: a proxy's header only from a trusted proxy."""

import pytest

from protocols.client_address import client_address, parse_proxies

PROXIES = parse_proxies(["10.0.0.0/8", "::1"])


def scope(peer: str, forwarded: str | None = None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return {"client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not a proxy: the header is ignored
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3", "198.51.100.1"),  # nearest untrusted
        ("10.0.0.2", "10.0.0.4", "10.0.0.2"),  # only proxies: the peer
        ("::1", "2001:db8::7", "2001:db8::7"),
    ],
)
def test_the_address_counted(peer: str, forwarded: str | None, expected: str) -> None:
    assert client_address(scope(peer, forwarded), PROXIES) == expected


def test_no_proxies_trusted_means_the_peer_always() -> None:
    assert client_address(scope("10.0.0.2", "198.51.100.1"), ()) == "10.0.0.2"


def test_a_bad_proxy_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"'example\.com'"):
        parse_proxies(["10.0.0.0/8", "example.com"])
