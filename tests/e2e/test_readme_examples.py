"""The README's shell examples, run as written against a gateway started as ``make run`` does.

A fenced ``sh`` block right after one of these HTML comments (GitHub does not show them) is an
example:

- ``<!-- example: run -->``: run with bash (``-euo pipefail``); it must exit with status 0.
- ``<!-- example: run in the background -->``: started, and left running while the examples
  after it run; it must end by itself (it is bounded, ``sub -C ... -W ...``) with status 0. It
  says on standard error when it is ready (``subscribed to ...``).
- ``<!-- example: run with REDIS_URL -->``: run against a second gateway, started with Redis as
  its channel layer.

The blocks run in the README's order, from the repository, each with the environment of its
gateway: a fresh SQLite database, migrated first. In their text ``.venv/bin/python`` becomes
this test's interpreter (as does ``python`` on the PATH), and 8000, 1883 and 6379 the ports of
the gateway, its embedded broker and Redis. Where an example's effect can be seen it is checked
too: a device message, ``send_message`` or the ``curl`` POST reaches the room's history (HTTP
API), the POST answers with the message frame, a user made is there.

Then the greeting ``rungateway`` prints is checked the same way (its lines run as written), and
``bridges.mqtt_cli`` is checked to say what is wrong with its exit status.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridges.mqtt_cli import build_parser
from tests.support.processes import (
    REPO,
    Process,
    Redis,
    django_shell,
    free_port,
    gateway_env,
    http_get,
    manage,
    wait_for,
)

README = REPO / "README.md"
KINDS = ("run", "run in the background", "run with REDIS_URL")
MARKED = re.compile(
    r"^<!-- example: (?P<kind>[^>]*?) -->\n```sh\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL
)
BLOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Example:
    line: int
    kind: str
    code: str

    @property
    def commands(self) -> list[list[str]]:
        """The block's commands, one per logical line, split as the shell would (roughly)."""
        joined = self.code.replace("\\\n", " ")
        return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def readme_examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    return [
        Example(text.count("\n", 0, found.start()) + 1, found["kind"], found["code"])
        for found in MARKED.finditer(text)
    ]


EXAMPLES = readme_examples()


@dataclass
class Site:
    """A gateway started as ``make run`` starts it, and the environment its examples run in."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    redis_port: int | None = None
    process: Process | None = None

    def start(self) -> "Site":
        result = manage("migrate", "--noinput", env=self.env)
        assert result.returncode == 0, result.stderr
        argv = [sys.executable, "manage.py", "rungateway", "--port", str(self.port)]
        argv += ["--mqtt-port", str(self.mqtt_port)]
        self.process = Process("rungateway", argv, self.workdir / "rungateway.log", env=self.env)
        self.process.start()
        self.process.wait_log("subscribed to", timeout=30)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def as_here(self, code: str) -> str:
        """``code`` with this site's interpreter and ports in place of the README's."""
        code = code.replace(".venv/bin/python", shlex.quote(sys.executable))
        code = re.sub(r"\b8000\b", str(self.port), code)
        code = re.sub(r"\b1883\b", str(self.mqtt_port), code)
        if self.redis_port is not None:
            code = re.sub(r"\b6379\b", str(self.redis_port), code)
        return code

    def history(self, room: str) -> list[dict[str, Any]]:
        """The room's messages, oldest first (none for a room that has had none)."""
        status, body = http_get(
            f"http://127.0.0.1:{self.port}/api/rooms/{room}/messages?limit=1000"
        )
        if status == 404:
            return []
        assert status == 200, body
        messages: list[dict[str, Any]] = json.loads(body)["messages"]
        return messages

    def last_seq(self, room: str) -> int:
        return max((message["seq"] for message in self.history(room)), default=0)

    def wait_for_message(self, room: str, after: int, what: str, **expected: Any) -> None:
        """Wait until a message newer than ``after`` with the ``expected`` fields is in ``room``."""

        def arrived() -> bool:
            return any(
                message["seq"] > after and expected.items() <= message.items()
                for message in self.history(room)
            )

        wait_for(arrived, f"{what} in room {room}'s history", timeout=15)


def environment(workdir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a gateway and its examples: ``python`` is this test's interpreter."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        wrapper.chmod(0o755)
    return gateway_env(
        DATABASE_URL=f"sqlite:///{workdir / 'gateway.sqlite3'}",
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **overrides,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("make-run")
    running = Site(workdir, environment(workdir)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def redis_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A second gateway, with its own Redis server as its channel layer (``REDIS_URL``)."""
    workdir = tmp_path_factory.mktemp("make-run-redis")
    redis_server = Redis(workdir).start()
    running = Site(workdir, environment(workdir, REDIS_URL=redis_server.url))
    running.redis_port = redis_server.port
    try:
        yield running.start()
    finally:
        running.stop()
        redis_server.stop()


@dataclass
class Background:
    example: Example
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module")
def background() -> Iterator[list[Background]]:
    """The background examples started so far; any still running at the end is killed."""
    started: list[Background] = []
    yield started
    for job in started:
        if job.popen.poll() is None:
            job.popen.kill()
            job.popen.wait(timeout=10)


def run(
    code: str, env: dict[str, str], timeout: float = BLOCK_TIMEOUT
) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def after(argv: list[str], word: str) -> list[str] | None:
    """The arguments after ``word`` in ``argv`` (None if it is not there)."""
    return argv[argv.index(word) + 1 :] if word in argv else None


def as_sent(text: str) -> Any:
    """A message as the gateway reads it: JSON when it parses, text otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def room_of(topic: str) -> str | None:
    levels = topic.split("/")
    return levels[1] if len(levels) >= 2 and levels[0] == "rooms" else None


def test_the_readme_marks_its_examples() -> None:
    text = README.read_text(encoding="utf-8")
    markers = re.findall(r"^<!-- example:[^>]*-->", text, flags=re.MULTILINE)
    assert len(markers) == len(EXAMPLES), "a marker not right before a ```sh block"
    assert {example.kind for example in EXAMPLES} <= set(KINDS)
    code = "\n".join(example.code for example in EXAMPLES)
    for needed in (
        "bridges.mqtt_cli pub",
        "bridges.mqtt_cli sub",
        "send_message",
        "createsuperuser",
        "issue_token",
        "curl",
    ):
        assert needed in code, f"no README example runs {needed}"
    assert "docker" not in code, "compose examples cannot run here: leave them unmarked"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_the_readme_example_runs_as_written(
    example: Example, request: pytest.FixtureRequest, background: list[Background]
) -> None:
    commands = example.commands
    if any(argv[0] == "curl" for argv in commands) and shutil.which("curl") is None:
        pytest.skip("curl is not installed (Debian: apt-get install curl)")
    target: Site = request.getfixturevalue(
        "redis_site" if example.kind == "run with REDIS_URL" else "site"
    )
    code = target.as_here(example.code)
    where = f"README.md:{example.line}"
    if example.kind == "run in the background":
        stdout, stderr = (target.workdir / f"line-{example.line}.{n}" for n in ("out", "err"))
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", code], cwd=REPO, env=target.env,
                stdout=out, stderr=err,
            )  # fmt: skip
        background.append(Background(example, popen, stdout, stderr))

        def ready() -> bool:
            assert popen.poll() is None, f"{where} ended early:\n{stderr.read_text()}"
            return "subscribed to" in stderr.read_text()

        wait_for(ready, f"{where} to subscribe", timeout=15)
        return

    # What the block should change, and how things stood before it.
    checks: list[tuple[str, int, str, dict[str, Any]]] = []  # room, seq before, what, fields
    for argv in commands:
        if (args := after(argv, "bridges.mqtt_cli")) and args[0] == "pub":
            options = build_parser()[0].parse_args(args)
            room = room_of(options.topic)
            if room is not None and not options.null_message:
                fields = {"source": "mqtt", "topic": options.topic}
                fields["message"] = as_sent(options.message)
                checks.append((room, target.last_seq(room), "the device message", fields))
        elif args := after(argv, "send_message"):
            room, message = args[0], args[1]
            fields = {"source": "http", "message": as_sent(message)}
            checks.append((room, target.last_seq(room), "send_message's message", fields))
    result = run(code, target.env)
    assert result.returncode == 0, (
        f"{where} failed ({result.returncode}):\n{code}\n"
        f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    for room, before, what, fields in checks:
        target.wait_for_message(room, before, f"{what} of {where}", **fields)
    for argv in commands:
        if argv[0] == "curl" and "-d" in argv:
            (url,) = [arg for arg in argv if arg.startswith("http://")]
            room = url.split("/api/rooms/", 1)[1].split("/", 1)[0]
            # A 201 answers with the message frame; refusals with {"error": ...}.
            frame = json.loads(result.stdout)
            assert "error" not in frame, frame
            assert frame["source"] == "http"
            assert frame["message"] == json.loads(argv[argv.index("-d") + 1])["message"]
            target.wait_for_message(
                room, frame["seq"] - 1, f"the message posted by {where}", id=frame["id"]
            )
        if args := after(argv, "createsuperuser"):
            username = args[args.index("--username") + 1]
            check = (
                "from django.contrib.auth import get_user_model; "
                f"print(get_user_model().objects.filter(username={username!r}, "
                "is_superuser=True).exists())"
            )
            assert django_shell(check, env=target.env) == "True"


def readme_outbound_envelope() -> dict[str, Any]:
    """The example envelope of the README's MQTT contract (Rooms to devices)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("- **Rooms to devices.**") :]
    found = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert found is not None
    example: dict[str, Any] = json.loads(found.group(1))
    return example


def test_the_background_examples_end_by_themselves(background: list[Background]) -> None:
    if not background:
        pytest.skip("no background example was started (the examples were not all run)")
    for job in background:
        where = f"README.md:{job.example.line}"
        try:
            job.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{where} is still running: it got\n{job.stdout.read_text()}\n"
                f"{job.stderr.read_text()}"
            )
        assert job.popen.returncode == 0, f"{where}:\n{job.stderr.read_text()}"
        lines = job.stdout.read_text().splitlines()
        if "bridges.mqtt_cli sub" not in job.example.code or "-v" not in job.example.code:
            continue
        printed = dict(line.split(" ", 1) for line in lines)
        device = printed.get("rooms/kitchen/sensor-1")
        assert device is not None, lines
        assert json.loads(device) == {"t": 21.5}, lines
        # What was said in the room reached MQTT as the README's contract shows it.
        envelope = json.loads(printed["rooms/kitchen/gateway"])
        assert envelope.keys() == readme_outbound_envelope().keys(), envelope
        assert isinstance(envelope["seq"], int)


def greeting_commands(log: str) -> dict[str, str]:
    """The greeting's commands: the publishing and watching lines, and the user one."""
    start = log.index("The gateway is up.")
    lines = [line.strip() for line in log[start:].splitlines()]
    found = {}
    for line in lines:
        for key, needle in (
            ("pub", "bridges.mqtt_cli pub"),
            ("sub", "bridges.mqtt_cli sub"),
            ("user", "manage.py createsuperuser"),
        ):
            if needle in line and key not in found:
                found[key] = line
    return found


def test_the_greeting_says_where_everything_is_and_its_lines_run(site: Site) -> None:
    assert site.process is not None
    log = site.process.log()
    assert f"http://127.0.0.1:{site.port}/" in log
    assert f"127.0.0.1 port {site.mqtt_port}" in log
    assert "mosquitto-clients" in log
    commands = greeting_commands(log)
    assert commands.keys() == {"pub", "sub", "user"}, log[-3000:]
    status, _ = http_get(f"http://127.0.0.1:{site.port}/")
    assert status == 200
    # The watching line, bounded, sees what the publishing line sends.
    watch = subprocess.Popen(
        ["bash", "-c", commands["sub"] + " -C 1 -W 20"], cwd=REPO, env=site.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.2)
        deadline = time.monotonic() + 15
        while watch.poll() is None and time.monotonic() < deadline:
            published = run(commands["pub"], site.env)
            assert published.returncode == 0, published.stderr
            try:
                watch.wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    topic, payload = out.strip().split(" ", 1)
    assert topic == "rooms/kitchen/sensor-1"
    assert json.loads(payload) == {"t": 21.5}


def mqtt_cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "bridges.mqtt_cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pub", "-t", "rooms/a/+", "-m", "x"], "is not a topic to publish to"),
        (["pub", "-t", "rooms/a"], "-m/--message -n/--null-message is required"),
        (["pub", "-t", "rooms/a", "-m", "x", "-p", "0"], "the port must be 1-65535"),
        (["pub", "-t", "rooms/a", "-m", "x", "-q", "3"], "invalid choice"),
        (["pub", "-t", "rooms/a", "-m", "x", "-P", "secret"], "needs a user name"),
        (["sub", "-t", "rooms/#/x"], "is not a topic filter"),
        (["sub", "-t", "rooms/a", "-C", "0"], "the count must be"),
        (["sub", "-t", "rooms/a", "-W", "soon"], "a timeout must be seconds"),
        (["pub", "-h", " ", "-t", "rooms/a", "-m", "x"], "the host (-h) is empty"),
        (["publish"], "invalid choice"),
    ],
)
def test_the_mqtt_client_refuses_bad_arguments_with_status_2(args: list[str], message: str) -> None:
    result = mqtt_cli(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_mqtt_client_fails_with_status_1_and_says_why(site: Site) -> None:
    broker = ["-h", "127.0.0.1", "-p", str(site.mqtt_port)]
    cases = [
        (["pub", "-p", str(free_port()), "-t", "rooms/a", "-m", "x"], "cannot connect to"),
        (
            ["pub", *broker, "-u", "nobody", "-P", "guess", "-t", "rooms/a", "-m", "x"],
            "refused the connection",
        ),
        (["sub", *broker, "-t", "gateways/#"], "refused the subscription to 'gateways/#'"),
        (["sub", *broker, "-t", "rooms/quiet", "-C", "1", "-W", "1"], "timed out after 1 s"),
    ]
    for args, message in cases:
        result = mqtt_cli(*args)
        assert result.returncode == 1, (args, result)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    quiet = mqtt_cli("sub", *broker, "-t", "rooms/quiet", "-W", "1")
    assert quiet.returncode == 0, quiet.stderr  # -W alone: watching for a while is the point
