"""``python -m benchmarks brokers``: the embedded broker beside Mosquitto (and amqtt).

One step, the one the embedded default must pass: a subscriber of ``bench/#``, 100 retained
topics held, and one publisher sending QoS 0 at 1,000 msg/s for 10 s; then 50 one-shot
publishers (connect, publish QoS 0, disconnect, as ``mosquitto_pub`` does). What each broker
delivered, its latency and its CPU time are written to ``brokers.md`` and ``brokers.json``.
"""

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

RATE, SECONDS, RETAINED, ONE_SHOTS = 1000, 10.0, 100, 50
BROKERS = ("mosquitto", "embedded", "amqtt")


@dataclass
class Result:
    broker: str
    sent: int
    delivered: int
    p50_ms: float
    p99_ms: float
    one_shots_sent: int
    one_shots_delivered: int
    cpu_seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(broker: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    if broker == "mosquitto":
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"user {os.environ.get('USER', 'root')}\nmax_queued_messages 100000\n"
        )
        argv = ["mosquitto", "-c", str(conf)]
        for folder in ("/usr/sbin", "/usr/local/sbin"):
            if Path(folder, "mosquitto").exists():
                argv[0] = f"{folder}/mosquitto"
    elif broker == "embedded":
        argv = [sys.executable, "-m", "bridges.broker", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "benchmarks.brokers", "serve-amqtt", str(port)]
    process = subprocess.Popen(  # noqa: S603 - our own argv
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            client = paho.Client(CallbackAPIVersion.VERSION2)
            client.connect("127.0.0.1", port)
        except OSError:
            time.sleep(0.1)
            continue
        client.disconnect()
        return process
    process.kill()
    raise RuntimeError(f"{broker} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(broker: str, workdir: Path) -> Result:
    port = free_port()
    process = start(broker, port, workdir)
    try:
        return _measure(broker, port, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _measure(broker: str, port: int, pid: int) -> Result:
    latencies: list[float] = []
    one_shots: set[int] = set()
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        if message.retain or not message.topic.startswith("bench/"):
            return
        body = json.loads(message.payload)
        with lock:
            if "shot" in body:
                one_shots.add(body["shot"])
            else:
                latencies.append(time.time() - body["at"])

    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    subscriber.on_message = on_message
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    # As the bridge does: a subscription that covers the retained topics (amqtt sends every
    # connecting client the retained messages of every client's filters).
    subscriber.subscribe([("bench/#", 0), ("held/#", 0)])
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    for index in range(RETAINED):
        publisher.publish(f"held/{index}", b"state", qos=1, retain=True).wait_for_publish(5)
    time.sleep(1)
    cpu_before = cpu_seconds(pid)
    sent = int(RATE * SECONDS)
    started = time.monotonic()
    for index in range(sent):
        publisher.publish("bench/live", json.dumps({"at": time.time(), "n": index}), qos=0)
        delay = started + (index + 1) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for shot in range(ONE_SHOTS):
        once = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        once.connect("127.0.0.1", port)
        once.loop_start()
        once.publish("bench/once", json.dumps({"shot": shot}), qos=0).wait_for_publish(5)
        once.disconnect()
        once.loop_stop()
    time.sleep(2)
    cpu = cpu_seconds(pid) - cpu_before
    for client in (publisher, subscriber):
        client.disconnect()
        client.loop_stop()
    with lock:
        ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000 if ordered else float("nan")
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else float("nan")
    return Result(broker, sent, len(ordered), p50, p99, ONE_SHOTS, len(one_shots), cpu)


def run_brokers(out: Path, brokers: tuple[str, ...] = BROKERS) -> int:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for broker in brokers:
            print(f"[brokers] {broker} ...", flush=True)
            result = measure(broker, Path(workdir))
            print(f"    {asdict(result)}", flush=True)
            results.append(result)
    (out / "brokers.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    lines = [
        "# The embedded broker beside Mosquitto and amqtt",
        "",
        f"QoS 0 at {RATE:,} msg/s for {SECONDS:.0f} s to one subscriber, {RETAINED} retained "
        f"topics held; then {ONE_SHOTS} one-shot publishers (connect, publish QoS 0, "
        "disconnect). Broker CPU over both.",
        "",
        "| broker | delivered | p50 | p99 | one-shot delivered | broker CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.broker} | {r.delivered:,} of {r.sent:,} | {r.p50_ms:.1f} ms | "
            f"{r.p99_ms:.1f} ms | {r.one_shots_delivered} of {r.one_shots_sent} | "
            f"{r.cpu_seconds:.2f} s |"
        )
    (out / "brokers.md").write_text("\n".join(lines) + "\n")
    print(out / "brokers.md")
    return 0


async def _serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__" and sys.argv[1:2] == ["serve-amqtt"]:
    asyncio.run(_serve_amqtt(int(sys.argv[2])))
