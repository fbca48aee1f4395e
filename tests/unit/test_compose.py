"""Deployment files: docker-compose.yml, the Dockerfile CMD and mosquitto.conf."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import django
import jsonschema
import pytest
import redis
import yaml
from django.apps import apps
from django.core.management import get_commands

from tests.support.processes import binary, wait_for

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "mosquitto" / "mosquitto.conf"
APP_SERVICES = ("web", "worker")
# MQTT 3.1.1 CONNECT (connect flags 0x02, keepalive 60, client id "test"), and an accepting CONNACK.
MQTT_CONNECT = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test"
MQTT_CONNACK_OK = b"\x20\x02\x00\x00"
MQTT_CONNACK_REFUSED = b"\x20\x02\x00\x05"  # not authorised
DAPHNE_PARSE = "from daphne.cli import CommandLineInterface as C; C().parser.parse_args()"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# What a user exports before `docker compose up`, as the compose file's comment says.
USER_ENV = {"MQTT_ADMIN_PASSWORD": "s3cret-admin", "DJANGO_SECRET_KEY": "k" * 50}


def interpolate(value: str, env: dict[str, str] = USER_ENV) -> str:
    """Compose's variable interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``."""

    def one(found: re.Match[str]) -> str:
        name, op, arg = found.group(1), found.group(2) or "", found.group(3) or ""
        if op == "-" and name in env:  # ${VAR-default}: the default only if unset
            return env[name]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would stop: {name} unset ({arg})")
        return arg

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?|-)([^}]*))?\}", one, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {str(key): interpolate(str(value)) for key, value in service["environment"].items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, from the short syntax `source:target[:mode]`."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def command_lines(command: str | list[str]) -> list[list[str]]:
    argv = shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    assert len(argv) == 3, argv
    lines = [shlex.split(part) for part in re.split(r"&&|;", argv[2])]
    return [line[1:] if line[:1] == ["exec"] else line for line in lines]


def check_daphne(where: str, argv: list[str]) -> None:
    module, _, attribute = argv[-1].partition(":")
    module_path = ROOT.joinpath(*module.split("."))
    assert attribute, f"{where}: application path {argv[-1]!r} lacks ':attribute'"
    assert module_path.with_suffix(".py").is_file() or (module_path / "__init__.py").is_file()
    assert find_spec("daphne") is not None, "daphne is not installed"
    assert entry_points(group="console_scripts", name="daphne"), "no daphne console script"
    # In a child process: importing daphne.cli installs a Twisted reactor.
    cmd = [sys.executable, "-c", DAPHNE_PARSE, *argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{where}: daphne rejects {argv[1:]}: {proc.stderr}"


def test_compose_file_matches_official_schema() -> None:
    # The Compose Specification's schema, as the check-jsonschema package ships it.
    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_bytes())
    validator = jsonschema.validators.validator_for(schema)(schema)
    document = compose()
    validator.validate(document)
    broken = {**document, "services": {"web": {**document["services"]["web"], "bogus": 1}}}
    assert not validator.is_valid(broken), "the schema accepts an unknown service key"


def test_service_commands_exist_in_project() -> None:
    if not apps.ready:  # pytest-django normally did this with DJANGO_SETTINGS_MODULE
        django.setup()
    django_commands = get_commands()
    dockerfile_cmd = (ROOT / "Dockerfile").read_text(encoding="utf-8").split("\nCMD ", 1)[1]
    commands: dict[str, Any] = {"Dockerfile CMD": json.loads(dockerfile_cmd.splitlines()[0])}
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build == "." or (isinstance(build, dict) and build.get("context") == "."):
            commands[name] = service.get("command", commands["Dockerfile CMD"])
    seen: set[str] = set()
    for where, command in commands.items():
        for argv in command_lines(command):
            if argv[0] == "daphne":
                check_daphne(where, argv)
                seen.add("daphne")
                continue
            assert argv[:2] in (["python", "manage.py"], ["python3", "manage.py"]), argv
            assert (ROOT / "manage.py").is_file()
            assert argv[2] in django_commands, f"{where}: no management command {argv[2]!r}"
            seen.add(argv[2])
    assert {"daphne", "migrate", "runworker"} <= seen


def test_app_services_share_environment_and_database_volume() -> None:
    document = compose()
    services = document["services"]
    envs = [environment(services[name]) for name in APP_SERVICES]
    for name, env in zip(APP_SERVICES, envs, strict=True):
        assert {"MQTT_URL", "REDIS_URL", "DATABASE_URL", "GATEWAY_ID"} <= env.keys(), name
        assert urlparse(env["MQTT_URL"]).hostname in services, env["MQTT_URL"]
        assert urlparse(env["REDIS_URL"]).hostname in services, env["REDIS_URL"]
    database_url = envs[0]["DATABASE_URL"]
    assert database_url == envs[1]["DATABASE_URL"]
    assert database_url.startswith("sqlite:////"), "expected an absolute SQLite path"
    db_dir = Path(database_url.removeprefix("sqlite:///")).parent
    sources = {mounts(services[name]).get(str(db_dir)) for name in APP_SERVICES}
    assert len(sources) == 1, sources
    assert sources <= set(document.get("volumes") or {}), f"{db_dir} is not a named volume"
    conf_source = mounts(services["mosquitto"]).get("/mosquitto/config/mosquitto.conf", "")
    assert (ROOT / conf_source).resolve() == MOSQUITTO_CONF
    assert MOSQUITTO_CONF.is_file()
    for service in services.values():  # every bind mount points into the repository
        for source in mounts(service).values():
            assert not source.startswith(".") or (ROOT / source).exists(), source


def test_worker_replicas_get_distinct_client_ids_that_survive_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compose cannot number replicas, but gives each container its own host name (its id),
    kept by `docker compose restart`: the worker's MQTT_CLIENT_ID is made from it."""
    from bridges.conf import MqttSettings

    services = compose()["services"]
    worker = environment(services["worker"])
    assert worker.items() >= environment(services["web"]).items(), "the shared environment"

    def client_id_on(hostname: str) -> str:
        monkeypatch.setattr(socket, "gethostname", lambda: hostname)
        settings = MqttSettings.from_env(
            url=worker["MQTT_URL"],
            protocol=worker.get("MQTT_PROTOCOL", "5"),
            gateway_id=worker["GATEWAY_ID"],
            client_id=worker.get("MQTT_CLIENT_ID"),
        )
        assert settings is not None
        return settings.client_id

    first, second = client_id_on("3f2a9c1b7d4e"), client_id_on("8b0e6d25a913")
    assert first != second
    assert first.startswith(worker["GATEWAY_ID"])
    assert "3f2a9c1b7d4e" in first
    assert client_id_on("3f2a9c1b7d4e") == first  # the same container, restarted


def mqtt_connack(
    port: int, proc: subprocess.Popen[bytes], seconds: float, connect: bytes = b""
) -> bytes:
    """Send CONNECT until the broker answers, it exits, or `seconds` pass."""
    connect = connect or MQTT_CONNECT
    reply, deadline = b"", time.monotonic() + seconds
    while not reply and proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(connect)
                while len(reply) < 4 and (chunk := sock.recv(4 - len(reply))):
                    reply += chunk
        except OSError:
            time.sleep(0.1)
    return reply


def dynsec_plugin() -> str:
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_*.so"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    pytest.fail("mosquitto_dynamic_security.so not found: install Debian's `mosquitto` package")


def mqtt_connect_packet(username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with client id "test", and the credentials if given."""
    flags, payload = 0x02, b"\x00\x04test"
    for value, flag in ((username, 0x80), (password, 0x40)):
        if value is not None:
            flags |= flag
            payload += len(value).to_bytes(2, "big") + value.encode()
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + payload
    return b"\x10" + bytes([len(body)]) + body


def test_compose_locks_mosquitto_down_and_gives_the_bridge_its_credentials() -> None:
    document = compose()
    mosquitto = document["services"]["mosquitto"]
    assert command_lines(mosquitto["command"]) == [["sh", "/mosquitto/start.sh"]]
    assert mounts(mosquitto)["/mosquitto/start.sh"] == "./mosquitto/start.sh"
    admin = environment(mosquitto)
    assert admin["MQTT_ADMIN_PASSWORD"] == USER_ENV["MQTT_ADMIN_PASSWORD"]
    with pytest.raises(AssertionError, match="MQTT_ADMIN_PASSWORD unset"):
        interpolate(mosquitto["environment"]["MQTT_ADMIN_PASSWORD"], {})
    for name in APP_SERVICES:
        env = environment(document["services"][name])
        url = urlparse(env["MQTT_URL"])
        assert env["MQTT_AUTH"] == "dynsec", name
        assert (url.username, url.password) == (admin["MQTT_ADMIN_USER"], "s3cret-admin"), name
        assert url.hostname == "mosquitto", name
        assert env["MQTT_ANONYMOUS"] == "none", name
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines()
    assert "allow_anonymous false" in conf
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert "plugin_opt_config_file /mosquitto/data/dynamic-security.json" in conf


def test_mosquitto_refuses_strangers_and_admits_the_bridge() -> None:
    """The shipped mosquitto.conf and start.sh, run for real (paths moved into a temp dir)."""
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines()
    keys = [line.split()[0] for line in conf if line.strip() and not line.startswith("#")]
    assert keys.count("listener") == 1
    assert "listener 1883" in conf
    assert "1883:1883" in compose()["services"]["mosquitto"]["ports"]
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    if shutil.which("mosquitto", path=search) is None:
        pytest.fail("mosquitto binary not found: install Debian's `mosquitto` package")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # mosquitto started as root drops to its own user
        dynsec = f"{tmp}/dynamic-security.json"
        rewrites = {
            "listener": f"listener {port} 127.0.0.1",
            "persistence_location": f"persistence_location {tmp}/",
            "log_dest": "log_dest stdout",
            "plugin": f"plugin {dynsec_plugin()}",
            "plugin_opt_config_file": f"plugin_opt_config_file {dynsec}",
        }
        adapted = [rewrites.get(line.split(" ", 1)[0], line) for line in conf]
        (Path(tmp) / "test.conf").write_text("\n".join(adapted) + "\n", encoding="utf-8")
        env = {
            **os.environ,
            "PATH": search,
            "DYNSEC_FILE": dynsec,
            "MOSQUITTO_CONF": f"{tmp}/test.conf",
            "MQTT_ADMIN_USER": "gateway",
            "MQTT_ADMIN_PASSWORD": "from-the-environment",
        }
        unset = subprocess.run(
            ["sh", str(ROOT / "mosquitto" / "start.sh"), "init"],
            env={**env, "DYNSEC_FILE": f"{tmp}/other.json", "MQTT_ADMIN_PASSWORD": ""},
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert unset.returncode == 1
        assert "MQTT_ADMIN_PASSWORD is not set" in unset.stderr
        cmd = ["sh", str(ROOT / "mosquitto" / "start.sh")]
        with subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc:
            try:
                anonymous = mqtt_connack(port, proc, 10, mqtt_connect_packet())
                wrong = mqtt_connack(port, proc, 10, mqtt_connect_packet("gateway", "guess"))
                bridge = mqtt_connack(
                    port, proc, 10, mqtt_connect_packet("gateway", "from-the-environment")
                )
            finally:
                proc.terminate()
                try:
                    output, _ = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    output, _ = proc.communicate(timeout=5)
    log = output.decode(errors="replace")
    assert bridge == MQTT_CONNACK_OK, f"the bridge was not admitted ({bridge!r}); log:\n{log}"
    assert anonymous == MQTT_CONNACK_REFUSED, f"anonymous: {anonymous!r}; log:\n{log}"
    assert wrong == MQTT_CONNACK_REFUSED, f"wrong password: {wrong!r}; log:\n{log}"


def test_compose_redis_is_bounded_and_refuses_writes_when_full_rather_than_evicting(
    tmp_path: Path,
) -> None:
    """The redis service's own command line, run for real with a small maxmemory."""
    command = [interpolate(part) for part in compose()["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--maxmemory"] == "512mb"
    assert options["--maxmemory-policy"] == "noeviction"
    assert interpolate("${REDIS_MAXMEMORY:-512mb}", {"REDIS_MAXMEMORY": "2gb"}) == "2gb"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    small = [binary("redis-server"), *command[1:], "--maxmemory", "3mb", "--port", str(port)]
    small += ["--bind", "127.0.0.1"]
    small += ["--dir", str(tmp_path)]
    server = subprocess.Popen(small, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for(lambda: _pings(client), "the compose redis to start")
        client.set("gateway:gw:seq:kept", 41)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            _fill(client, 10_000)  # ~10 MB: past the 3 MB
        # Nothing was evicted to make room: the first key is still there.
        assert client.get("gateway:gw:seq:kept") == b"41"
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _fill(client: "redis.Redis", keys: int) -> None:
    for n in range(keys):
        client.set(f"filler:{n}", b"x" * 1024)


def _pings(client: "redis.Redis") -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


HA_ENV_FILE = ROOT / "config" / "compose-ha.env"
HA_SERVICES = ("web", "web-2", "worker")


def ha_env() -> dict[str, str]:
    """What compose reads with ``--env-file .env --env-file config/compose-ha.env``."""
    env = {**USER_ENV, "POSTGRES_PASSWORD": "pgsecret123"}
    for line in HA_ENV_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = interpolate(value.strip(), env)
    return env


def sentinel_config(service: dict[str, Any]) -> list[str]:
    """The lines a Sentinel service writes to its configuration, as its shell would."""
    script = service["command"][2].replace("$$", "$")
    script = script.replace("$SENTINEL_NAME", service["environment"]["SENTINEL_NAME"])
    return shlex.split(script.split("printf '%s\\n'", 1)[1].split(">", 1)[0])


def test_the_ha_profile_runs_every_gateway_process_on_the_sentinels_and_postgres() -> None:
    document = compose()
    services = document["services"]
    env = ha_env()
    assert env["COMPOSE_PROFILES"] == "ha"
    ha = {name for name, service in services.items() if "ha" in service.get("profiles", [])}
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "postgres", "web-2"} <= ha
    sentinels = [name for name in services if name.startswith("sentinel-")]
    for name in HA_SERVICES:
        app = {k: interpolate(str(v), env) for k, v in services[name]["environment"].items()}
        assert app["REDIS_URL"] == ""  # the Sentinels name the master
        named = [entry.split(":") for entry in app["REDIS_SENTINELS"].split(",")]
        assert sorted(host for host, _ in named) == sorted(sentinels)
        for host, port in named:
            config = sentinel_config(services[host])
            assert f"port {port}" in config
            assert f"sentinel announce-ip {host}" in config  # its service name, not an IP
            assert f"sentinel monitor {app['REDIS_SENTINEL_MASTER']} redis 6379 2" in config
        database = urlparse(app["DATABASE_URL"])
        assert (database.scheme, database.hostname) == ("postgres", "postgres")
        assert database.password == env["POSTGRES_PASSWORD"]
        assert interpolate(str(services[name]["build"]["args"]["WITH_POSTGRES"]), env) == "1"
        assert services[name]["depends_on"]["postgres"]["required"] is False
    replica = [interpolate(part, env) for part in services["redis-replica"]["command"]]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    # The gateway takes that environment as it is.
    app = {k: interpolate(str(v), env) for k, v in services["web"]["environment"].items()}
    started = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **app},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr


def test_the_ha_sentinel_configuration_runs_on_redis_sentinel(tmp_path: Path) -> None:
    """A Sentinel service's configuration, run for real: it finds the master and answers."""
    services = compose()["services"]
    config = sentinel_config(services["sentinel-1"])
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
    redis_port, sentinel_port = ports
    lines = [
        line.replace("port 26379", f"port {sentinel_port}")
        .replace("announce-port 26379", f"announce-port {sentinel_port}")
        .replace("announce-ip sentinel-1", "announce-ip 127.0.0.1")
        .replace("gateway redis 6379", f"gateway localhost {redis_port}")
        for line in config
    ]
    (tmp_path / "sentinel.conf").write_text("\n".join([*lines, f"dir {tmp_path}", ""]))
    server = subprocess.Popen(
        [binary("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sentinel = subprocess.Popen(
        [binary("redis-sentinel"), str(tmp_path / "sentinel.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=sentinel_port, decode_responses=True)
    try:
        wait_for(lambda: _pings(client), "the compose Sentinel to start")
        found = client.sentinel_get_master_addr_by_name("gateway")
        # named by host name, as the configuration asks (resolve- and announce-hostnames)
        assert found == ("localhost", redis_port)
    finally:
        client.close()
        for process in (sentinel, server):
            process.terminate()
            process.wait(timeout=10)
        assert sentinel.stdout is not None
        sentinel.stdout.close()
