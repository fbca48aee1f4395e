"""A gateway whose daphne, autobahn and Twisted report versions protocols/compat.py was not
written for: it starts, says so, counts it, and still carries messages and closes cleanly.

The versions are faked in the daphne process by a ``sitecustomize`` module on its PYTHONPATH
that answers ``importlib.metadata.version`` for the three libraries; the gateway's code has no
hook for it.
"""

import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.clients import (
    flood,
    mqtt_client,
    recv_json,
    ws_connect,
)
from tests.support.processes import Gateway, Mosquitto, http_get
from tests.support.prometheus import parse_exposition, samples

LIBRARIES = ("daphne", "autobahn", "twisted")
PRETEND = """\
import importlib.metadata as _metadata

_real = _metadata.version
_PRETEND = {"daphne": "99.0", "autobahn": "99.0", "twisted": "99.0"}


def version(name):
    return _PRETEND.get(name.lower()) or _real(name)


_metadata.version = version
"""


@pytest.fixture(scope="module")
def gateway_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The module's gateway: every process sees the newer versions, and floods quickly."""
    site = tmp_path_factory.mktemp("pretend-versions")
    (site / "sitecustomize.py").write_text(PRETEND)
    return {"PYTHONPATH": str(site), "GATEWAY_WS_RATE": "5", "GATEWAY_WS_BURST": "5"}


def test_it_starts_warns_once_per_library_and_counts_them(gateway: Gateway) -> None:
    log = gateway.web.log()
    for name in LIBRARIES:
        assert f"{name} 99.0 is outside the versions protocols/compat.py was written for" in log
    assert "Traceback" not in log
    status, text = http_get(f"{gateway.http}/metrics")
    assert status == 200
    families = parse_exposition(text)
    for name in LIBRARIES:
        found = samples(families, "gateway_compat_unpatched_total", library=name)
        assert [s.value for s in found] == [1.0], name


async def test_a_browser_message_reaches_another_browser(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "plain") as alice, ws_connect(gateway.ws, "plain") as bob:
        await alice.send(json.dumps({"message": "hi"}))
        frame = await recv_json(bob)
        assert (frame["type"], frame["source"], frame["message"]) == ("message", "ws", "hi")
        assert (await recv_json(alice))["id"] == frame["id"]


async def test_a_device_message_reaches_a_browser(gateway: Gateway, broker: Mosquitto) -> None:
    async with ws_connect(gateway.ws, "plain-kitchen") as ws, mqtt_client(broker.port) as device:
        await device.publish("rooms/plain-kitchen/sensor-1", b'{"t": 21.5}', qos=1)
        frame = await recv_json(ws)
        assert (frame["source"], frame["sender"], frame["message"]) == (
            "mqtt",
            "sensor-1",
            {"t": 21.5},
        )


async def test_a_welcome_larger_than_the_frame_limit_still_arrives(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "plain-big") as ws:
        for n in range(2):
            await ws.send(json.dumps({"message": f"{n}" * 60_000}))
            assert len((await recv_json(ws))["message"]) == 60_000
    async with ws_connect(gateway.ws, "plain-big") as ws:  # about 120 KB
        assert [m["message"][0] for m in ws.welcome["messages"]] == ["0", "1"]


async def test_an_oversized_frame_closes_cleanly_with_4009(gateway: Gateway) -> None:
    async with ws_connect(gateway.ws, "plain") as ws:
        await ws.send(json.dumps({"message": "x" * 70_000}))  # over 64 KiB, under daphne's 1 MiB
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4009  # 1009, as autobahn lets an application close
    async with ws_connect(gateway.ws, "plain") as ws:  # the server goes on
        await ws.send(json.dumps({"message": "after"}))
        assert (await recv_json(ws))["message"] == "after"


async def test_a_flood_gets_error_frames_then_closes_cleanly_with_4008(gateway: Gateway) -> None:
    frames, code, seen = await flood(gateway.ws, "plain-flood")
    assert code == 4008  # 1008
    assert seen == [0, 1, 2, 3, 4]
    assert "rate_limited" in [f.get("code") for f in frames if f["type"] == "error"]
