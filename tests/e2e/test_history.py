"""Rooms that remember: a browser that was away gets exactly what it missed, then live traffic."""

import asyncio
import json

from tests.support.clients import frames_within, recv_json, ws_connect
from tests.support.devices import Device
from tests.support.processes import Gateway, Mosquitto


def seqs_of(frames: list[dict[str, object]]) -> list[int]:
    return [f["message"]["seq"] for f in frames]  # type: ignore[index]


async def receive_until(ws: object, count: int) -> list[dict[str, object]]:
    frames: list[dict[str, object]] = []
    while len(frames) < count:
        got = await frames_within(ws, 2.0)  # type: ignore[arg-type]
        if not got:
            break
        frames.extend(got)
    return frames


async def test_a_browser_away_for_200_messages_gets_exactly_those_then_live(
    gateway: Gateway, broker: Mosquitto
) -> None:
    with Device(broker.port, "meter") as device:
        async with ws_connect(gateway.ws, "plant") as watcher:
            async with ws_connect(gateway.ws, "plant") as away:
                await asyncio.to_thread(device.publish_sequence, "rooms/plant/meter", 20, 40.0)
                before = await receive_until(away, 20)
                assert seqs_of(before) == list(range(20))
                last_seq = before[-1]["seq"]
            # Away for five seconds while 200 messages flow into the room.
            await asyncio.to_thread(device.publish_sequence, "rooms/plant/meter", 200, 40.0, 20)
            assert seqs_of(await receive_until(watcher, 220))[-200:] == list(range(20, 220))
            async with ws_connect(gateway.ws, "plant", since=last_seq) as back:  # type: ignore[arg-type]
                welcome = back.welcome  # type: ignore[attr-defined]
                assert welcome["gap"] is False
                assert seqs_of(welcome["messages"]) == list(range(20, 220))
                room_seqs = [m["seq"] for m in welcome["messages"]]
                assert room_seqs == sorted(room_seqs)
                assert room_seqs[0] > last_seq
                await asyncio.to_thread(device.publish_sequence, "rooms/plant/meter", 30, 40.0, 220)
                live = await receive_until(back, 30)
                assert seqs_of(live) == list(range(220, 250))
                assert await frames_within(back, 0.5) == []


async def test_a_browser_resuming_mid_conversation_misses_nothing_said_meanwhile(
    gateway: Gateway,
) -> None:
    async with ws_connect(gateway.ws, "talk") as alice:
        await alice.send(json.dumps({"message": "one"}))
        first = await recv_json(alice)
        async with ws_connect(gateway.ws, "talk", since=first["seq"]) as bob:
            await alice.send(json.dumps({"message": "two"}))
            assert bob.welcome["messages"] == []  # type: ignore[attr-defined]
            assert (await recv_json(bob))["message"] == "two"
        async with ws_connect(gateway.ws, "talk", since=0) as carol:
            said = [m["message"] for m in carol.welcome["messages"]]  # type: ignore[attr-defined]
            assert said == ["one", "two"]
