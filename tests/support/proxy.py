"""A TCP proxy of our own, on loopback, to cut, block, delay and throttle links between real
processes.

It runs its own event loop on a thread, so synchronous and asynchronous tests can both drive it.
"""

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

from tests.support.processes import free_port


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>`` until told to cut or block.

    `degrade` makes every link slow, each way: ``delay`` seconds added to every byte (order
    kept) and at most ``rate`` bytes a second; `restore` makes them fast again.
    """

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.blocked = False
        self.delay = 0.0
        self.rate: float | None = None
        self.connections = 0  # accepted so far
        self._links: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    def start(self) -> "Proxy":
        self._thread.start()
        self._server = self._run(
            asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        )
        return self

    def stop(self) -> None:
        self._run(self._close_all(stop_listening=True))
        self._run(self._cancel_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self, *, block: bool = True) -> None:
        """Drop every open link (as a pulled cable would); with ``block``, refuse new ones."""
        self.blocked = block
        self._run(self._close_all())

    def unblock(self) -> None:
        """Let new links through again."""
        self.blocked = False

    def degrade(self, *, delay: float = 0.0, rate: float | None = None) -> None:
        """Delay every chunk by ``delay`` seconds and carry at most ``rate`` bytes a second."""
        self.delay, self.rate = delay, rate

    def restore(self) -> None:
        """No more delay or throttling (what is already delayed still arrives, in order)."""
        self.delay, self.rate = 0.0, None

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_all(self, *, stop_listening: bool = False) -> None:
        if stop_listening and self._server is not None:
            self._server.close()
        for writer in list(self._links):
            transport = writer.transport
            if hasattr(transport, "abort"):
                transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks wait here until they are due: reading goes on while they are delayed.
        due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        forwarding = asyncio.create_task(self._forward(due, writer))
        try:
            while data := await reader.read(self._chunk()):
                due.put_nowait((self._loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        finally:
            due.put_nowait(None)
            with contextlib.suppress(Exception):
                await forwarding
            self._links.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    def _chunk(self) -> int:
        # Throttled links move small chunks, so the rate holds over fractions of a second.
        return 65536 if self.rate is None else max(1, min(65536, int(self.rate / 20)))

    async def _forward(
        self, due: "asyncio.Queue[tuple[float, bytes] | None]", writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while (item := await due.get()) is not None:
                when, data = item
                await asyncio.sleep(max(0.0, when - self._loop.time()))
                writer.write(data)
                await writer.drain()
                if self.rate is not None:
                    await asyncio.sleep(len(data) / self.rate)
