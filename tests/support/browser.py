"""A real headless Chromium (the system's), driven by Playwright."""

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, async_playwright

# Background networking off: the machine may have no route out, and the page needs none.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The system's Chromium, or a failure that says how to get it."""
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("Chromium is not installed: run `make test` (it installs Debian's chromium)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_dir() -> Path:
    """Where page tests save screenshots: ``SCREENSHOT_DIR`` (``make screenshots``) or var/."""
    folder = Path(
        os.environ.get("SCREENSHOT_DIR") or Path(__file__).parents[2] / "var" / "screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder
