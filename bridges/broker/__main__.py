"""``python -m bridges.broker [--host H] [--port P]``: the embedded broker alone, open to all.

For trying clients out and for the broker contract tests; ``rungateway`` embeds the same broker
with the gateway's permissions.
"""

import argparse
import asyncio
import signal

from bridges.broker.server import Broker


async def main(host: str, port: int) -> None:
    broker = Broker()
    await broker.start(host, port)
    print(f"listening on {host}:{broker.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bridges.broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0-65535")
    asyncio.run(main(args.host, args.port))
