"""Fixtures shared by every tier: real servers on free ports, and a migrated database."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Gateway, Mosquitto, Redis, gateway_env, manage

# The test process itself never talks to a configured broker or Redis.
for _name in ("MQTT_URL", "REDIS_URL", "GATEWAY_ID"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis")).start()
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
    result = manage("migrate", "--noinput", env=gateway_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    return url


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
