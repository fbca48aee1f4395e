"""The load and receive processes (Node scripts in ``load/``), driven by JSON lines."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

LOAD_DIR = Path(__file__).resolve().parent / "load"
NODE_MODULES = LOAD_DIR.parent / "node_modules"
LINE_LIMIT = 4 * 1024 * 1024


class HarnessError(RuntimeError):
    """A load or receive process failed: the measurement cannot be trusted."""


def node_binary() -> str:
    path = shutil.which("node")
    if path is None:
        raise HarnessError("node is not installed: the load and receive processes need Node 18+")
    if not (NODE_MODULES / "ws").is_dir() or not (NODE_MODULES / "mqtt").is_dir():
        raise HarnessError("benchmarks/node_modules is missing: run `npm ci` in benchmarks/")
    return path


class NodeProcess:
    """One Node process: ``role`` is ``load`` (it sends) or ``receivers`` (it counts)."""

    def __init__(
        self, name: str, script: str, config: dict[str, Any], role: str, log_dir: Path
    ) -> None:
        self.name = name
        self.script = script
        self.config = config
        self.role = role
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within: float) -> dict[str, Any]:
        """Start the process and wait (at most ``within`` s) for its ``ready`` event."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                node_binary(),
                str(LOAD_DIR / self.script),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=LOAD_DIR,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        self._reader = asyncio.create_task(self._read())
        # The configuration goes in on stdin: a list of thousands of rooms is too long for argv.
        await self._write(self.config)
        return await self.wait("ready", within)

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                await self.events.put(json.loads(line))
        await self.events.put({"event": "exit"})

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait(self, event: str, within: float) -> dict[str, Any]:
        """The next ``event`` from the process; fails on an error, an exit or after ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(self.events.get(), max(0.0, left))
            except TimeoutError:
                raise HarnessError(f"{self.name}: no {event!r} within {within:.0f} s") from None
            if message.get("event") == event:
                return message
            if message.get("event") in {"error", "exit"}:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise HarnessError(f"{self.name}: {message.get('detail', 'exited')}\n{tail}")

    async def request(self, command: dict[str, Any], event: str, within: float) -> dict[str, Any]:
        await self._write(command)
        return await self.wait(event, within)

    async def stop(self) -> None:
        """Close stdin (the process exits), then kill its process group if it lingers."""
        if self.proc is None:
            return
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
