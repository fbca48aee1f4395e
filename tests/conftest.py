"""Fixtures shared by every tier: real servers on free ports, and a migrated database."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import stamps
from tests.support.ledger import Ledger
from tests.support.processes import (
    Gateway,
    Mosquitto,
    Postgres,
    Redis,
    RedisReplicated,
    gateway_env,
    migrated,
    postgres_bindir,
)

# The test process itself never talks to a configured broker or Redis.
for _name in ("MQTT_URL", "REDIS_URL", "GATEWAY_ID"):
    os.environ.pop(_name, None)


_ledger = Ledger()


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    """Where fault scenarios record what they sent, lost and repeated (printed at the end)."""
    return _ledger


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ledger.rows:
        terminalreporter.write_sep("=", "promises under faults")
        terminalreporter.write_line(_ledger.table())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A real PostgreSQL server with a cluster of its own; each module creates its databases."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL's server binaries (initdb, postgres) are not installed: `make test` "
            "installs Debian's postgresql package"
        )
    server = Postgres(tmp_path_factory.mktemp("postgres"), bindir).start()
    yield server
    server.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database for gateway subprocesses."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'gateway.sqlite3'}"
    return migrated(url)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A broker shared by the tests of a module (each uses its own rooms)."""
    server = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_options() -> dict[str, Any]:
    """How a module's `gateway` starts: `start_gateway`'s keywords (a module may override)."""
    return {}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    broker: Mosquitto,
    redis_server: Redis,
    database_url: str,
    gateway_options: dict[str, Any],
) -> Iterator[Gateway]:
    """daphne and a bridge worker on `broker`, shared by the tests of a module."""
    workdir = tmp_path_factory.mktemp("gateway")
    stack = start_gateway(workdir, broker, redis_server, database_url, **gateway_options)
    yield stack
    stack.stop()


def start_gateway(
    workdir: Path,
    broker: Mosquitto,
    redis: Redis,
    database_url: str,
    *,
    workers: int = 1,
    **env: str,
) -> Gateway:
    """daphne and ``workers`` bridge workers wired to ``broker`` and ``redis``."""
    environment = gateway_env(
        MQTT_URL=broker.url,
        REDIS_URL=redis.url,
        DATABASE_URL=database_url,
        GATEWAY_ID=f"gw-{workdir.name[-20:].replace('_', '-')}",
    )
    environment.update(env)
    gateway = Gateway(workdir, environment)
    try:
        return gateway.start(workers)
    except Exception:
        gateway.stop()
        raise


def gateway_on_sentinels(
    workdir: Path, broker: Mosquitto, database_url: str, gateway_id: str, **redis: int
) -> tuple[RedisReplicated, Gateway]:
    """A Redis master, its replica and three Sentinels, started, and a gateway (not started:
    its processes are the caller's to choose) that follows the master through them."""
    replicated = RedisReplicated(workdir / "redis", **redis).start()
    (workdir / "gateway").mkdir()
    env = gateway_env(
        MQTT_URL=broker.url,
        DATABASE_URL=database_url,
        GATEWAY_ID=gateway_id,
        **replicated.env(),
    )
    return replicated, Gateway(workdir / "gateway", env)


@pytest.fixture(autouse=True)
def _fast_password_hashing(request: pytest.FixtureRequest) -> None:
    """Device secrets hashed quickly in the test process (servers it starts hash for real)."""
    if "django_db" in request.keywords or "settings" in request.fixturenames:
        settings = request.getfixturevalue("settings")
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cached_answers() -> None:
    """Each test starts without the answers an earlier one cached from its own database
    (between tests the database is emptied behind the ORM's back, moving no stamp)."""
    stamps.forget_all()
