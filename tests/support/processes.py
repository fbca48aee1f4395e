"""Real servers for the tests: Mosquitto, Redis, PostgreSQL, daphne and the bridge worker, on
free ports."""

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
import trustme

REPO = Path(__file__).resolve().parents[2]
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_request(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One HTTP request to a loopback URL: the status and the body, 4xx and 5xx included."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (loopback only): the status and the body, 4xx and 5xx included."""
    return http_request("GET", url)


def binary(name: str) -> str:
    """The path of a system binary the tests need, or a failure that says how to get it."""
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run `make test` (it installs Debian's {name})"
        )
    return path


@dataclass
class Process:
    """A child process with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> "Process":
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(self.argv),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user and system, all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit status."""
        if self.popen is None:
            return None
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        return self.popen.returncode

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            if not self.alive() and text not in self.log():
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_for(seen, f"{self.name} to log {text!r}", timeout)


class Mosquitto:
    """A real Mosquitto broker on a free port, restartable on the same port."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        listener: str = "",
        extra: str = "allow_anonymous true\n",
    ) -> None:
        """``listener`` adds lines to the listener (TLS files, say); ``extra`` adds global ones."""
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        store = f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
        self.conf.write_text(
            # Started as root, Mosquitto would switch to its own user and could not read or
            # write the test's files; as anyone else, this line changes nothing.
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            f"{store if persistence else 'persistence false'}\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra}"
            f"listener {self.port} 127.0.0.1\n"
            f"{listener}"
        )
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        """The persistence file (with ``persistence=True``)."""
        return self.workdir / "mosquitto.db"

    def start(self) -> "Mosquitto":
        self.process = Process(
            "mosquitto", [binary("mosquitto"), "-c", str(self.conf)], self.workdir / "mosquitto.log"
        ).start()
        wait_for(lambda: port_open(self.port), f"mosquitto on port {self.port}")
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        wait_for(lambda: not port_open(self.port), "mosquitto to go away")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Redis:
    """A real Redis server on a free port, with nothing saved to disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        argv = [
            binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.process = Process("redis", argv, self.workdir / "redis.log").start()
        wait_for(lambda: port_open(self.port), f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def used_memory(self) -> int:
        """Bytes of memory Redis uses for data."""
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()


class RedisReplicated:
    """A Redis master with one replica and three Sentinels watching them, on free ports: the
    smallest set that survives losing the master (two Sentinels agree it is down, one of them
    promotes the replica).

    Attributes:
        down_after_ms: how long the master must be unreachable before Sentinels call it down.
        secure: every server and Sentinel listens over TLS only (a throwaway CA) and asks for
            a password (the servers one, the Sentinels another).
        shards: more masters (without replicas) the Sentinels monitor, ``shard-1``..., for
            ``REDIS_SHARDS``.
    """

    MASTER = "gateway"  # the name the Sentinels monitor the master under
    PASSWORD = "data-s3cret"
    SENTINEL_PASSWORD = "sentinel-s3cret"

    def __init__(
        self, workdir: Path, *, down_after_ms: int = 1000, secure: bool = False, shards: int = 0
    ) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.secure = secure
        self.ca = workdir / "ca.pem"
        self.servers = [_Node(workdir / "redis-a", self), _Node(workdir / "redis-b", self)]
        self.shards = {
            f"shard-{i}": _Node(workdir / f"shard-{i}", self) for i in range(1, shards + 1)
        }
        self.sentinels = [_Node(workdir / f"sentinel-{index}", self) for index in range(3)]

    @property
    def sentinel_list(self) -> str:
        """``REDIS_SENTINELS``: the Sentinels' addresses."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def env(self) -> dict[str, str]:
        """What a gateway process needs to follow the master through the Sentinels."""
        env = {"REDIS_SENTINELS": self.sentinel_list, "REDIS_SENTINEL_MASTER": self.MASTER}
        if self.shards:
            env["REDIS_SHARDS"] = ",".join(self.shards)
        if self.secure:
            env["REDIS_URL"] = f"rediss://:{self.PASSWORD}@/0?ssl_ca_certs={self.ca}"
            env["REDIS_SENTINEL_PASSWORD"] = self.SENTINEL_PASSWORD
        return env

    def _tls(self) -> list[str]:
        """The TLS settings of a server or Sentinel, as configuration lines."""
        if not self.secure:
            return []
        folder = self.workdir
        return [
            f"tls-cert-file {folder / 'server.pem'}",
            f"tls-key-file {folder / 'server.key'}",
            f"tls-ca-cert-file {self.ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]

    def _make_certificates(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA()
        server = authority.issue_cert("127.0.0.1", "localhost")
        authority.cert_pem.write_to_path(str(self.ca))
        server.cert_chain_pems[0].write_to_path(str(self.workdir / "server.pem"))
        server.private_key_pem.write_to_path(str(self.workdir / "server.key"))

    def start(self) -> "RedisReplicated":
        if self.secure:
            self._make_certificates()
        secrets_ = [f"requirepass {self.PASSWORD}", f"masterauth {self.PASSWORD}"]
        data = ["save ''", "appendonly no", *self._tls(), *(secrets_ if self.secure else [])]
        first, second = self.servers
        first.start(binary("redis-server"), data)
        second.start(binary("redis-server"), [*data, f"replicaof 127.0.0.1 {first.port}"])
        wait_for(lambda: self._link_up(second), "the replica to sync with the master", 30)
        for shard in self.shards.values():
            shard.start(binary("redis-server"), data)
        masters = {self.MASTER: first.port} | {n: s.port for n, s in self.shards.items()}
        for node in self.sentinels:
            watch = []
            for name, port in masters.items():
                watch += [
                    f"sentinel monitor {name} 127.0.0.1 {port} 2",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} 10000",
                    f"sentinel parallel-syncs {name} 1",
                ]
                if self.secure:
                    watch.append(f"sentinel auth-pass {name} {self.PASSWORD}")
            if self.secure:
                watch += [
                    f"requirepass {self.SENTINEL_PASSWORD}",
                    f"sentinel sentinel-pass {self.SENTINEL_PASSWORD}",
                ]
            node.start(binary("redis-sentinel"), [*self._tls(), *watch])
        wait_for(self._sentinels_agree, "the Sentinels to find each other and the replica", 30)
        return self

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it."""
        for node in self.sentinels:
            if not node.alive():
                continue
            try:
                found = node.client().sentinel_get_master_addr_by_name(self.MASTER)
            except redis.RedisError:
                continue
            if found:
                return int(found[1])
        return None

    def master(self) -> "_Node":
        port = self.master_port()
        return next(node for node in self.servers if node.port == port)

    def kill_master(self) -> int:
        """SIGKILL the master, as a crash would; its port."""
        node = self.master()
        assert node.process is not None
        node.process.kill()
        return node.port

    def _link_up(self, replica: "_Node") -> bool:
        try:
            return replica.client().info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def _sentinels_agree(self) -> bool:
        for node in self.sentinels:
            try:
                state = node.client().sentinel_master(self.MASTER)
            except redis.RedisError:
                return False
            if int(state.get("num-other-sentinels", 0)) < 2 or int(state.get("num-slaves", 0)) < 1:
                return False
        return True

    def stop(self) -> None:
        for node in (*self.sentinels, *self.servers, *self.shards.values()):
            node.stop()


class _Node:
    """One process of a `RedisReplicated`: a server or a Sentinel, on a free port, from a
    configuration file of its own (a Sentinel rewrites its file as it learns)."""

    def __init__(self, workdir: Path, group: RedisReplicated) -> None:
        self.workdir = workdir
        self.group = group
        self.port = free_port()
        self.process: Process | None = None

    @property
    def is_sentinel(self) -> bool:
        return self.workdir.name.startswith("sentinel")

    def start(self, program: str, lines: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen = [f"tls-port {self.port}", "port 0"] if self.group.secure else [f"port {self.port}"]
        config = self.workdir / "node.conf"
        config.write_text("\n".join([*listen, "bind 127.0.0.1", f"dir {self.workdir}", *lines, ""]))
        name = self.workdir.name
        self.process = Process(name, [program, str(config)], self.workdir / "server.log").start()
        wait_for(lambda: port_open(self.port), f"{name} on port {self.port}")

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def client(self) -> redis.Redis:
        options: dict[str, object] = {}
        if self.group.secure:
            options = {
                "ssl": True,
                "ssl_ca_certs": str(self.group.ca),
                "password": self.group.SENTINEL_PASSWORD
                if self.is_sentinel
                else self.group.PASSWORD,
            }
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True, **options
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


POSTGRES_VERSIONS = Path("/usr/lib/postgresql")  # Debian's: one directory per major version


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, postgres), or None.

    Debian's newest version if there is one (they are not on the PATH), else the PATH's.
    """

    def version(initdb: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in initdb.parents[1].name.split(".") if part.isdigit())

    found = sorted(POSTGRES_VERSIONS.glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb", path=SBIN_PATH)
    # A link on the PATH leads to the directory that has the rest (createdb, postgres).
    return Path(initdb).resolve().parent if initdb else None


class Postgres:
    """A real PostgreSQL server: a fresh cluster on a free loopback port, made for the tests.

    The cluster lives in a temporary directory of its own, removed by `stop`; its log is
    ``workdir/postgres.log``. Its superuser `USER` is trusted without a password, and durability
    is off (no fsync): a crash of the machine loses it, which a test cluster may.

    PostgreSQL refuses to run as root. Started by root, initdb and the server run as the
    ``postgres`` user (which Debian's package creates), and the cluster's directory is made
    outside pytest's temporary directories (only root may enter those) and given to that user.
    """

    USER = "gateway"
    DATABASE = "gateway"  # the database `url` names

    def __init__(self, workdir: Path, bindir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.bindir = bindir
        self.cluster: Path | None = None  # the temporary directory: data/, and the socket
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return self.database_url(self.DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgres://{self.USER}@127.0.0.1:{self.port}/{name}"

    def _as_owner(self) -> list[str]:
        """What runs a command as the cluster's owner, in the cluster's directory (empty when
        this process may own it)."""
        if os.geteuid() != 0:
            return []
        assert self.cluster is not None
        # setpriv executes the command in its own place (runuser would stay, as its parent), so
        # the signals `stop` sends reach the server itself. env -C: the server must be able to
        # enter its working directory (PostgreSQL 15 returns to it while finding its own path),
        # and the test's may be closed to that user.
        return [
            binary("setpriv"),
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "env",
            "-C",
            str(self.cluster),
        ]

    def start(self) -> "Postgres":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.cluster = Path(tempfile.mkdtemp(prefix="gateway-postgres-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL will not run as root, and there is no postgres user to run it "
                    "as: install Debian's postgresql package (`make test` does)"
                ) from None
            os.chown(self.cluster, owner.pw_uid, owner.pw_gid)
        data = self.cluster / "data"
        initdb = subprocess.run(
            [
                *self._as_owner(),
                str(self.bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                self.USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            cwd=self.cluster,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        (self.workdir / "initdb.log").write_text(initdb.stdout + initdb.stderr)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{(initdb.stdout + initdb.stderr)[-3000:]}")
        argv = [
            *self._as_owner(),
            str(self.bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-k",  # the unix socket: in the cluster's directory, not the system's
            str(self.cluster),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        self.process = Process("postgres", argv, self.workdir / "postgres.log").start()
        self.process.wait_log("database system is ready to accept connections", timeout=60)
        self.create_database(self.DATABASE)

    def create_database(self, name: str) -> str:
        """Create the database ``name``; its URL."""
        result = subprocess.run(
            [
                str(self.bindir / "createdb"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                self.USER,
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"createdb {name} failed:\n{result.stderr[-3000:]}")
        return self.database_url(name)

    def stop(self) -> None:
        if self.process is not None:
            # SIGINT: a fast shutdown, which does not wait for the clients still connected.
            self.process.signal(signal.SIGINT)
            self.process.stop()
        if self.cluster is not None:
            shutil.rmtree(self.cluster, ignore_errors=True)


def gateway_env(**overrides: str) -> dict[str, str]:
    """The environment a gateway process gets in the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "REDIS_", "GATEWAY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_SECRET_KEY="tests-only-secret-key-0123456789abcdef",
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


def migrated(url: str) -> str:
    """``url`` (a database), its migrations applied by ``manage.py migrate``."""
    result = manage("migrate", "--noinput", env=gateway_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    return url


def manage(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` to completion."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def django_shell(code: str, *, env: dict[str, str]) -> str:
    """Run Python in ``manage.py shell`` against the gateway's database; its output."""
    result = manage("shell", "--no-imports", "-c", code, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py shell failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


@dataclass
class Gateway:
    """daphne processes serving the gateway, and ``runworker mqtt-bridge`` workers."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    webs: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def web(self) -> Process:
        return self.webs[0]

    @property
    def worker(self) -> Process:
        return self.workers[0]

    def start(self, workers: int = 1) -> "Gateway":
        for _ in range(workers):
            self.start_worker()
        self.start_web(self.port)
        return self

    def start_web(self, port: int | None = None) -> int:
        """Another daphne process on the same channel layer; its port."""
        port = port or free_port()
        name = f"daphne-{len(self.webs)}"
        web = Process(
            name,
            [
                sys.executable,
                "-m",
                "daphne",
                "-e",
                f"tcp:port={port}:interface=127.0.0.1:backlog=4096",
                "config.asgi:application",
            ],
            self.workdir / f"{name}.log",
            env=self.env,
        ).start()
        self.webs.append(web)
        self.ports.append(port)
        wait_for(lambda: port_open(port), f"{name} on port {port}", timeout=30)
        return port

    def restart_web(self, index: int) -> None:
        """Start web process ``index`` again on its port (stopped first, if it still runs)."""
        self.webs[index].stop()
        port = self.ports[index]
        others = self.webs[index + 1 :], self.ports[index + 1 :]
        del self.webs[index:], self.ports[index:]
        self.start_web(port)  # named and logged as the one it replaces
        self.webs += others[0]
        self.ports += others[1]

    def start_worker(self, index: int | None = None) -> Process:
        """Start (or restart) worker ``index``; each has its own MQTT client id and log."""
        index = len(self.workers) if index is None else index
        env = dict(self.env, MQTT_CLIENT_ID=f"{self.env['GATEWAY_ID']}-bridge-{index}")
        worker = Process(
            f"worker-{index}",
            [sys.executable, "manage.py", "runworker", "mqtt-bridge"],
            self.workdir / f"worker-{index}.log",
            env=env,
        )
        offset = len(worker.log())
        worker.start()
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        wait_for(
            lambda: "subscribed to" in worker.log()[offset:] or not worker.alive(),
            f"worker-{index} to subscribe",
            timeout=30,
        )
        if not worker.alive():
            raise RuntimeError(f"worker-{index} exited early:\n{worker.log()[-3000:]}")
        return worker

    def stop(self) -> None:
        for process in (*self.webs, *self.workers):
            process.stop()
