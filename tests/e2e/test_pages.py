"""The pages in a real headless Chromium, against real daphne, worker, Redis and Mosquitto.

The browser reaches daphne through a proxy of our own, so a test can cut its socket.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from tests.support.browser import chromium, screenshot_dir
from tests.support.clients import ws_connect
from tests.support.devices import Device
from tests.support.processes import Gateway, Mosquitto, django_shell
from tests.support.proxy import Proxy

PRESENCE_LIST_MAX = 5  # past this many members a room's page shows the count, not the list


@pytest.fixture(scope="module")
def gateway_options() -> dict[str, Any]:
    return {
        "GATEWAY_PRESENCE_LIST_MAX": str(PRESENCE_LIST_MAX),
        "GATEWAY_PRESENCE_INTERVAL": "0.1",
        "GATEWAY_PRESENCE_COUNT_INTERVAL": "0.5",
    }


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[Proxy]:
    link = Proxy(gateway.port).start()
    yield link
    link.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


# What the browser refused under the pages' Content-Security-Policy (nothing, we expect).
csp_violations: list[str] = []


def watch_csp(page: Page) -> None:
    def seen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            csp_violations.append(message.text)

    page.on("console", seen)


async def open_room(browser: Browser, proxy: Proxy, room: str) -> Page:
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    watch_csp(page)
    await page.goto(f"http://127.0.0.1:{proxy.port}/rooms/{room}/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=10_000)
    return page


async def texts(page: Page) -> list[str]:
    return await page.locator("#log li.message .text").all_inner_texts()


async def test_a_message_typed_in_one_browser_appears_in_the_other(
    browser: Browser, proxy: Proxy
) -> None:
    alice, bob = (
        await open_room(browser, proxy, "page-porch"),
        await open_room(browser, proxy, "page-porch"),
    )
    await alice.fill("#message", "the parcel is here")
    await alice.press("#message", "Enter")
    line = bob.locator("#log li.message", has_text="the parcel is here")
    await expect(line).to_have_count(1, timeout=10_000)
    await expect(line.locator(".badge")).to_have_text("browser")
    await expect(bob.locator("#presence li[data-kind='browser']")).to_have_count(2)


async def test_a_device_fills_the_panel_and_the_chart_live(
    browser: Browser, proxy: Proxy, broker: Mosquitto
) -> None:
    page = await open_room(browser, proxy, "page-greenhouse")
    series = page.locator("#chart-legend li[data-series='sensor-1.temp']")
    row = page.locator("#devices tr[data-topic='rooms/page-greenhouse/sensor-1']")
    with Device(broker.port, "greenhouse-sensor") as device:
        for n in range(5):
            device.publish(
                "rooms/page-greenhouse/sensor-1", json.dumps({"temp": 21.5 + n}).encode()
            )
            await asyncio.sleep(0.2)
        await expect(row.locator(".value")).to_contain_text("25.5", timeout=10_000)
        await expect(series).to_have_attribute("data-points", "5", timeout=10_000)
        await expect(series.locator(".latest")).to_contain_text("25.5")
        for n in range(5, 10):
            device.publish(
                "rooms/page-greenhouse/sensor-1", json.dumps({"temp": 21.5 + n}).encode()
            )
            await asyncio.sleep(0.2)
        await expect(series).to_have_attribute("data-points", "10", timeout=10_000)
        await expect(row.locator(".value")).to_contain_text("30.5")
    assert await page.locator("#chart").evaluate("c => c.width > 0 && c.height > 0")
    await page.screenshot(path=str(screenshot_dir() / "room.png"))
    assert csp_violations == []  # the live page runs whole under its policy


async def test_a_cut_socket_reconnects_and_shows_every_missed_message_once_in_order(
    browser: Browser, proxy: Proxy, broker: Mosquitto
) -> None:
    page = await open_room(browser, proxy, "page-meter")
    with Device(broker.port, "meter-device") as device:
        sending = asyncio.create_task(
            asyncio.to_thread(device.publish_sequence, "rooms/page-meter/m", 80, 10.0)
        )
        await asyncio.sleep(2)
        proxy.cut(block=True)  # the network goes away for three seconds
        await expect(page.locator("#status")).not_to_have_attribute("data-state", "open")
        await asyncio.sleep(3)
        proxy.unblock()
        await sending
    await expect(page.locator("#log li.message")).to_have_count(80, timeout=20_000)
    seqs = [json.loads(text)["seq"] for text in await texts(page)]
    assert seqs == list(range(80))
    assert proxy.connections >= 2  # it did reconnect


async def test_markup_in_messages_shows_as_text_and_runs_nothing(
    browser: Browser, proxy: Proxy, broker: Mosquitto
) -> None:
    page = await open_room(browser, proxy, "page-mailbox")
    evil = "<img src=x onerror=alert(1)>"
    with Device(broker.port, "evil-device") as device:
        device.publish("rooms/page-mailbox/<b>bold</b>", evil.encode())
    await page.fill("#message", evil)
    await page.press("#message", "Enter")
    await expect(page.locator("#log li.message .text", has_text=evil)).to_have_count(2)
    assert await page.locator("#log img, #devices img").count() == 0
    await expect(page.locator("#devices td.value")).to_have_text(evil)


async def test_the_index_lists_rooms_with_live_counts(
    browser: Browser, proxy: Proxy, broker: Mosquitto
) -> None:
    room = await open_room(browser, proxy, "page-kitchen")
    with Device(broker.port, "kitchen-fridge") as device:
        device.publish("rooms/page-kitchen/fridge/status", b"online", retain=True)
        device.publish("rooms/page-kitchen/fridge", b'{"temp": 4.5}')
    await expect(room.locator("#presence li[data-kind='device']")).to_have_count(1)
    await expect(room.locator("#log li.message")).to_have_count(1)  # the room is recorded
    index = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await index.goto(f"http://127.0.0.1:{proxy.port}/")
    kitchen = index.locator("#rooms li[data-room='page-kitchen']")
    await expect(kitchen.locator(".people")).to_have_attribute("data-count", "1", timeout=15_000)
    await expect(kitchen.locator(".devices")).to_have_attribute("data-count", "1")
    await index.screenshot(path=str(screenshot_dir() / "index.png"))


REGISTER = """
from gateway.devices import add_device
from gateway.models import Device
if not Device.objects.filter(name="page-pump").exists():
    add_device("page-pump")
"""


async def test_registered_devices_show_as_verified_and_others_as_unverified(
    browser: Browser, proxy: Proxy, broker: Mosquitto, gateway: Gateway
) -> None:
    await asyncio.to_thread(django_shell, REGISTER, env=gateway.env)
    page = await open_room(browser, proxy, "page-pumphouse")
    evil = "<img src=x onerror=alert(1)>"
    with Device(broker.port, "pumphouse-devices") as device:
        for name in ("page-pump", "page-impostor", evil):
            device.publish(f"rooms/page-pumphouse/{name}/status", b"online", retain=True)
    devices = page.locator("#presence li[data-kind='device']")
    await expect(devices).to_have_count(3, timeout=10_000)
    pump = devices.filter(has_text="page-pump")
    await expect(pump).to_have_attribute("data-verified", "true")
    await expect(pump.locator(".verified")).to_have_text("\u2713")
    await expect(pump.locator(".verified")).to_have_attribute("title", "verified device")
    for name in ("page-impostor", evil):
        other = devices.filter(has_text=name)
        await expect(other).to_have_attribute("data-verified", "false")
        await expect(other.locator(".unverified")).to_have_text("unverified")
        await expect(other.locator(".verified")).to_have_count(0)
    assert await page.locator("#presence img").count() == 0  # a name is text, never markup
    # A browser that comes later sees the same marks, from its welcome.
    later = await open_room(browser, proxy, "page-pumphouse")
    await expect(later.locator("#presence li[data-verified='true']")).to_have_count(1)
    await expect(later.locator("#presence li[data-verified='false']")).to_have_count(2)


async def test_a_big_room_shows_its_count_lists_members_on_request_and_the_list_when_small(
    browser: Browser, proxy: Proxy, gateway: Gateway
) -> None:
    page = await open_room(browser, proxy, "page-crowd")
    button = page.locator("#presence-list")
    await expect(button).to_be_hidden()
    async with contextlib.AsyncExitStack() as crowd:
        sockets = []
        for _ in range(PRESENCE_LIST_MAX + 1):
            inner = contextlib.AsyncExitStack()
            await inner.enter_async_context(ws_connect(gateway.ws, "page-crowd"))
            crowd.push_async_callback(inner.aclose)
            sockets.append(inner)
        members = PRESENCE_LIST_MAX + 2  # the crowd and the page
        await expect(page.locator("#presence-count")).to_have_text(f"{members} here")
        await expect(page.locator("#presence li")).to_have_count(0)
        await expect(button).to_be_visible()
        await button.click()  # a page of the list, over the socket
        await expect(page.locator("#presence li")).to_have_count(members)
        await expect(button).to_be_hidden()  # one page held them all
        for inner in sockets[:4]:
            await inner.aclose()
        # Small again: the whole list, kept by each change from then on.
        await expect(page.locator("#presence li")).to_have_count(members - 4)
        await expect(page.locator("#presence-count")).to_have_text(f"{members - 4} people")
