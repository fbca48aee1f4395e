"""The systems under test, each a set of real processes on free loopback ports.

- ``mosquitto``: Mosquitto's own WebSocket listener; browsers speak MQTT over WebSocket to it.
- ``naive``: the Channels tutorial's chat consumer on daphne, default ``RedisChannelLayer``
  settings, and a minimal MQTT bridge (``benchmarks/naive``).
- ``gateway``: daphne serving ``config.asgi`` and one ``runworker mqtt-bridge``, with Redis and
  Mosquitto; ``gateway-uvicorn`` serves the same application with uvicorn instead of daphne;
  ``gateway-sentinel`` keeps daphne, on a Redis master with a replica and three Sentinels (the
  bridge then waits for the replica before it acknowledges a device message);
  ``gateway-shards`` keeps daphne, with rooms spread over two Redis servers (``REDIS_SHARDS``).
"""

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import Proc, rss_bytes
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Process,
    Redis,
    RedisReplicated,
    free_port,
    gateway_env,
    http_get,
    manage,
    port_open,
    wait_for,
)
from tests.support.prometheus import parse_exposition

# A Python exception as a traceback ends: "package.module.SomeError: what happened".
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exceeded)\w*: ")
# Frames a gateway socket may send: high enough that the uplink scenario is never rate-limited.
WS_RATE = "10000"
WS_BURST = "100000"
WS_ANONYMOUS = "1000000"


class SystemFailed(RuntimeError):
    """A system could not be started (or is not what it claims to be)."""


@dataclass(frozen=True)
class Endpoint:
    """How devices and browsers reach a running system."""

    mqtt_url: str
    ws_mode: str  # "ws": the rooms' WebSocket; "mqtt-ws": MQTT over the broker's WebSocket
    ws_url: str  # ws: a URL with {room} in it; mqtt-ws: the broker's ws:// URL
    origin: str | None
    welcome: bool  # the server sends a welcome frame first


class System:
    """A system under test: `start` it, measure its processes, `stop` it."""

    name = "system"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mosquitto: Mosquitto | None = None
        self.redis: Redis | None = None
        self.extra_procs: list[Process] = []

    def start(self) -> Endpoint:
        raise NotImplementedError

    def server_procs(self) -> list[Proc]:
        """The processes that hold the browsers' connections (their memory is per connection)."""
        raise NotImplementedError

    def procs(self) -> list[Proc]:
        procs = list(self.server_procs())
        if self.redis is not None and self.redis.process is not None:
            procs.append(Proc("redis", "redis", self.redis.process.pid))
        broker = self.mosquitto.process if self.mosquitto is not None else None
        if broker is not None and not any(p.pid == broker.pid for p in procs):
            procs.append(Proc("mosquitto", "mosquitto", broker.pid))
        return procs

    def server_rss(self) -> int:
        return sum(rss_bytes(p.pid) or 0 for p in self.server_procs())

    def stop_server(self) -> None:
        """Stop the process that holds the browsers' connections (SIGTERM), as a deployment
        that restarts it does."""
        raise SystemFailed(f"{self.name} cannot restart its server here")

    def start_server(self) -> None:
        """Start it again where it was."""
        raise SystemFailed(f"{self.name} cannot restart its server here")

    def redis_rss(self) -> int | None:
        if self.redis is None or self.redis.process is None:
            return None
        return rss_bytes(self.redis.process.pid)

    def drops(self) -> dict[str, float] | None:
        """The server's own counters of dropped messages, when it exposes any."""
        return None

    def logs(self) -> list[Path]:
        servers = [s.process for s in (self.mosquitto, self.redis) if s is not None]
        return [p.log_path for p in (*servers, *self.extra_procs) if p is not None]

    def log_errors(self, top: int = 3) -> list[str]:
        """The commonest exceptions in the system's logs, with how often each appeared."""
        counts: dict[str, int] = {}
        for path in self.logs():
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                match = ERROR_LINE.match(line)
                if match is not None:
                    key = re.sub(r"\d+", "N", line.strip())[:200]
                    counts[key] = counts.get(key, 0) + 1
        commonest = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"{count} x {line}" for line, count in commonest]

    def alive(self) -> bool:
        return all(p.alive() for p in self.extra_procs)

    def stop(self) -> None:
        for process in reversed(self.extra_procs):
            process.stop()
        for server in (self.redis, self.mosquitto):
            if server is not None:
                server.stop()

    def _broker(self, *, websockets: bool = False) -> tuple[Mosquitto, int | None]:
        ws_port = free_port() if websockets else None
        extra = "allow_anonymous true\n"
        if ws_port is not None:
            # A second listener, before the MQTT one that the helper appends.
            extra += f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
        self.mosquitto = Mosquitto(self.workdir, extra=extra).start()
        if ws_port is not None:
            wait_for(lambda: port_open(ws_port), f"mosquitto websockets on port {ws_port}")
        return self.mosquitto, ws_port


class MosquittoSystem(System):
    name = "mosquitto"

    def start(self) -> Endpoint:
        broker, ws_port = self._broker(websockets=True)
        return Endpoint(broker.url, "mqtt-ws", f"ws://127.0.0.1:{ws_port}", None, welcome=False)

    def server_procs(self) -> list[Proc]:
        assert self.mosquitto is not None
        assert self.mosquitto.process is not None
        return [Proc("mosquitto", "mosquitto", self.mosquitto.process.pid)]

    def alive(self) -> bool:
        return (
            self.mosquitto is not None
            and self.mosquitto.process is not None
            and (self.mosquitto.process.alive())
        )

    def stop_server(self) -> None:
        assert self.mosquitto is not None
        self.mosquitto.stop()

    def start_server(self) -> None:
        assert self.mosquitto is not None
        self.mosquitto.start()


class NaiveSystem(System):
    name = "naive"

    def start(self) -> Endpoint:
        broker, _ = self._broker()
        self.redis = Redis(self.workdir).start()
        env = gateway_env(
            DJANGO_SETTINGS_MODULE="benchmarks.naive.settings",
            MQTT_URL=broker.url,
            REDIS_URL=self.redis.url,
        )
        port = free_port()
        bridge = Process(
            "naive-bridge",
            [sys.executable, "-m", "benchmarks.naive.bridge"],
            self.workdir / "naive-bridge.log",
            env=env,
        ).start()
        self.extra_procs.append(bridge)
        bridge.wait_log("subscribed", timeout=30)
        web = Process(
            "naive-daphne",
            [
                *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
                "benchmarks.naive.asgi:application",
            ],
            self.workdir / "naive-daphne.log",
            env=env,
        ).start()
        self.extra_procs.append(web)
        wait_for(lambda: port_open(port) or not web.alive(), f"naive daphne on {port}", 30)
        if not web.alive():
            raise SystemFailed(f"naive daphne exited:\n{web.log()[-2000:]}")
        origin = f"http://127.0.0.1:{port}"
        return Endpoint(
            broker.url, "ws", f"ws://127.0.0.1:{port}/ws/rooms/{{room}}/", origin, welcome=False
        )

    def server_procs(self) -> list[Proc]:
        web = self.extra_procs[1]
        return [Proc("server", web.name, web.pid)]

    def procs(self) -> list[Proc]:
        bridge = self.extra_procs[0]
        return [*super().procs(), Proc("bridge", bridge.name, bridge.pid)]


class UvicornGateway(Gateway):
    """The gateway served by uvicorn instead of daphne."""

    def start_web(self, port: int | None = None) -> int:
        port = port or free_port()
        name = f"uvicorn-{len(self.webs)}"
        web = Process(
            name,
            [
                *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
                *("--host", "127.0.0.1", "--port", str(port)),
                # The sans-I/O implementation: the websockets library's current API.
                *("--ws", "websockets-sansio", "--lifespan", "off"),
                *("--no-access-log", "--log-level", "warning"),
            ],
            self.workdir / f"{name}.log",
            env=self.env,
        ).start()
        self.webs.append(web)
        self.ports.append(port)
        wait_for(lambda: port_open(port) or not web.alive(), f"{name} on port {port}", timeout=30)
        if not web.alive():
            raise SystemFailed(f"{name} exited:\n{web.log()[-2000:]}")
        return port


class GatewaySystem(System):
    """The gateway: one web process, one bridge worker, Redis and Mosquitto."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        database: Path,
        *,
        uvicorn: bool = False,
        sentinel: bool = False,
        shards: int = 1,
    ) -> None:
        super().__init__(workdir)
        self.name = name
        self.database = database
        self.uvicorn = uvicorn
        # A Redis master with a replica and three Sentinels: what surviving a failover costs.
        self.replicated = RedisReplicated(workdir / "redis-set") if sentinel else None
        # Redis servers for rooms beside the main one (REDIS_SHARDS).
        self.shards = [Redis(workdir / f"shard-{i}") for i in range(1, shards)]
        self.gateway: Gateway | None = None

    def _redis_env(self) -> dict[str, str]:
        if self.replicated is not None:
            return self.replicated.start().env()
        self.redis = Redis(self.workdir).start()
        env = {"REDIS_URL": self.redis.url}
        for shard in self.shards:
            shard.workdir.mkdir(exist_ok=True)
            shard.start()
        if self.shards:
            named = (f"{s.workdir.name}={s.url}" for s in self.shards)
            env["REDIS_SHARDS"] = ",".join(named)
        return env

    def start(self) -> Endpoint:
        broker, _ = self._broker()
        redis_env = self._redis_env()
        database = self.workdir / "gateway.sqlite3"
        for leftover in (".sqlite3-wal", ".sqlite3-shm"):  # a previous run's: they would corrupt it
            database.with_suffix(leftover).unlink(missing_ok=True)
        shutil.copyfile(self.database, database)
        env = gateway_env(
            MQTT_URL=broker.url,
            DATABASE_URL=f"sqlite:///{database}",
            GATEWAY_ID="bench",
            **redis_env,
            GATEWAY_WS_RATE=WS_RATE,
            GATEWAY_WS_BURST=WS_BURST,
            # Every load socket comes from this machine's one address.
            GATEWAY_WS_MAX_ANONYMOUS_PER_ADDRESS=WS_ANONYMOUS,
            GATEWAY_WS_MAX_ANONYMOUS=WS_ANONYMOUS,
        )
        self.gateway = (UvicornGateway if self.uvicorn else Gateway)(self.workdir, env)
        try:
            self.gateway.start(workers=1)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemFailed(f"the gateway did not start: {exc}") from exc
        return Endpoint(
            broker.url,
            "ws",
            f"{self.gateway.ws}/ws/rooms/{{room}}/",
            self.gateway.http,
            welcome=True,
        )

    def server_procs(self) -> list[Proc]:
        assert self.gateway is not None
        return [Proc("server", web.name, web.pid) for web in self.gateway.webs]

    def stop_server(self) -> None:
        assert self.gateway is not None
        self.gateway.web.stop()

    def start_server(self) -> None:
        assert self.gateway is not None
        self.gateway.restart_web(0)

    def procs(self) -> list[Proc]:
        assert self.gateway is not None
        workers = [Proc("bridge", w.name, w.pid) for w in self.gateway.workers]
        redis_set = []
        if self.replicated is not None:  # the master and its replica (Sentinels idle)
            redis_set = [
                Proc("redis", node.workdir.name, node.process.pid)
                for node in self.replicated.servers
                if node.process is not None
            ]
        shards = [
            Proc("redis", shard.workdir.name, shard.process.pid)
            for shard in self.shards
            if shard.process is not None
        ]
        return [*super().procs(), *workers, *redis_set, *shards]

    def alive(self) -> bool:
        return self.gateway is not None and all(
            p.alive() for p in (*self.gateway.webs, *self.gateway.workers)
        )

    def drops(self) -> dict[str, float] | None:
        """Every ``*dropped*`` series of ``/metrics`` (the web process shows the worker's too)."""
        assert self.gateway is not None
        try:
            status, body = http_get(f"{self.gateway.http}/metrics")
            families = parse_exposition(body) if status == 200 else {}
        except (OSError, AssertionError):
            return None
        series: dict[str, float] = {}
        for family in families.values():
            for sample in family.samples:
                if "dropped" in sample.name:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    series[f"{sample.name}{{{labels}}}"] = sample.value
        return series

    def logs(self) -> list[Path]:
        own = [] if self.gateway is None else [*self.gateway.webs, *self.gateway.workers]
        return [*super().logs(), *(p.log_path for p in own)]

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.replicated is not None:
            self.replicated.stop()
        for shard in self.shards:
            shard.stop()
        super().stop()


SYSTEM_NAMES = (
    "mosquitto",
    "naive",
    "gateway",
    "gateway-uvicorn",
    "gateway-sentinel",
    "gateway-shards",
)
# What a full run compares; gateway-sentinel and gateway-shards run when asked for (--systems).
DEFAULT_SYSTEMS = ("mosquitto", "naive", "gateway", "gateway-uvicorn")


def migrated_database(workdir: Path) -> Path:
    """A migrated SQLite database, copied for each gateway that starts."""
    path = workdir / "template.sqlite3"
    if not path.exists():
        result = manage(
            "migrate", "--noinput", env=gateway_env(DATABASE_URL=f"sqlite:///{path}"), timeout=120
        )
        if result.returncode != 0:
            raise SystemFailed(f"migrate failed:\n{result.stderr[-2000:]}")
    return path


def make_system(name: str, workdir: Path, database_dir: Path) -> System:
    """A fresh, not yet started, system ``name`` working in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "mosquitto":
        return MosquittoSystem(workdir)
    if name == "naive":
        return NaiveSystem(workdir)
    if name.startswith("gateway"):
        database = migrated_database(database_dir)
        if name == "gateway":
            return GatewaySystem(workdir, name, database)
        if name == "gateway-uvicorn":
            return GatewaySystem(workdir, name, database, uvicorn=True)
        if name == "gateway-sentinel":
            return GatewaySystem(workdir, name, database, sentinel=True)
        if name == "gateway-shards":
            return GatewaySystem(workdir, name, database, shards=2)
    raise ValueError(f"unknown system {name!r}: choose from {', '.join(SYSTEM_NAMES)}")
