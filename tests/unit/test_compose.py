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
import yaml
from django.apps import apps
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "mosquitto" / "mosquitto.conf"
APP_SERVICES = ("web", "worker")
# MQTT 3.1.1 CONNECT (connect flags 0x02, keepalive 60, client id "test"), and an accepting CONNACK.
MQTT_CONNECT = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test"
MQTT_CONNACK_OK = b"\x20\x02\x00\x00"
DAPHNE_PARSE = "from daphne.cli import CommandLineInterface as C; C().parser.parse_args()"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in service["environment"].items()}


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
        if service.get("build") in (".", {"context": "."}):
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


def mqtt_connack(port: int, proc: subprocess.Popen[bytes], seconds: float) -> bytes:
    """Send CONNECT until the broker answers, it exits, or `seconds` pass."""
    reply, deadline = b"", time.monotonic() + seconds
    while not reply and proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(MQTT_CONNECT)
                while len(reply) < 4 and (chunk := sock.recv(4 - len(reply))):
                    reply += chunk
        except OSError:
            time.sleep(0.1)
    return reply


def test_mosquitto_accepts_config() -> None:
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines()
    keys = [line.split()[0] for line in conf if line.strip() and not line.startswith("#")]
    assert keys.count("listener") == 1
    assert "listener 1883" in conf
    assert "1883:1883" in compose()["services"]["mosquitto"]["ports"]
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    binary = shutil.which("mosquitto", path=search)
    if binary is None:
        pytest.fail("mosquitto binary not found: install Debian's `mosquitto` package")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # mosquitto started as root drops to its own user
        rewrites = {
            "listener": f"listener {port} 127.0.0.1",
            "persistence_location": f"persistence_location {tmp}/",
            "log_dest": "log_dest stdout",
        }
        adapted = [rewrites.get(line.split(" ", 1)[0], line) for line in conf]
        (Path(tmp) / "test.conf").write_text("\n".join(adapted) + "\n", encoding="utf-8")
        cmd = [binary, "-c", str(Path(tmp) / "test.conf")]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
            try:
                reply = mqtt_connack(port, proc, seconds=10)
            finally:
                proc.terminate()
                try:
                    output, _ = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    output, _ = proc.communicate(timeout=5)
    log = output.decode(errors="replace")
    assert reply == MQTT_CONNACK_OK, f"no accepting CONNACK from mosquitto ({reply!r}); log:\n{log}"
