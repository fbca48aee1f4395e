"""The bridge on a broker that asks for TLS and a password, as production brokers do."""

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import trustme

from tests.conftest import start_gateway
from tests.support.clients import recv_json, ws_connect
from tests.support.processes import Mosquitto, Process, Redis, binary, gateway_env, wait_for


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = (
        tmp_path / "ca.pem",
        tmp_path / "server.pem",
        tmp_path / "key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_path))
    server.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    passwords = tmp_path / "passwd"
    for user, password in (("gateway", "g4teway-secret"), ("device", "d3vice-secret")):
        flags = ["-b", "-c"] if not passwords.exists() else ["-b"]
        subprocess.run(
            [binary("mosquitto_passwd"), *flags, str(passwords), user, password], check=True
        )
    passwords.chmod(0o600)
    broker = Mosquitto(
        tmp_path,
        extra=f"allow_anonymous false\npassword_file {passwords}\n",
        listener=f"cafile {ca_path}\ncertfile {cert_path}\nkeyfile {key_path}\n",
    ).start()
    yield broker, ca_path
    broker.stop()


async def test_tls_and_a_password_carry_device_messages_into_rooms(
    tmp_path: Path,
    secure_broker: tuple[Mosquitto, Path],
    redis_server: Redis,
    database_url: str,
) -> None:
    broker, ca_path = secure_broker
    url = f"mqtts://gateway:g4teway-secret@127.0.0.1:{broker.port}?ca={ca_path}"
    gateway = start_gateway(tmp_path, broker, redis_server, database_url, MQTT_URL=url)
    tls = ssl.create_default_context(cafile=str(ca_path))
    try:
        async with (
            ws_connect(gateway.ws, "strongroom") as browser,
            aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username="device",
                password="d3vice-secret",
                tls_context=tls,
            ) as device,
        ):
            await device.publish("rooms/strongroom/lock", b'{"locked": true}', qos=1)
            frame = await recv_json(browser)
            assert (frame["sender"], frame["message"]) == ("lock", {"locked": True})
    finally:
        gateway.stop()


def lone_worker(workdir: Path, name: str, url: str, redis: Redis) -> Process:
    """A bridge worker on ``url``, started, with nobody waiting for it to subscribe."""
    env = gateway_env(MQTT_URL=url, REDIS_URL=redis.url, GATEWAY_ID=name)
    argv = [sys.executable, "manage.py", "runworker", "mqtt-bridge"]
    return Process(name, argv, workdir / f"{name}.log", env=env).start()


def test_a_wrong_password_is_reported_and_retried_without_crashing(
    tmp_path: Path, secure_broker: tuple[Mosquitto, Path], redis_server: Redis
) -> None:
    broker, ca_path = secure_broker
    url = f"mqtts://gateway:wrong@127.0.0.1:{broker.port}?ca={ca_path}"
    worker = lone_worker(tmp_path, "wrong-password", url, redis_server)
    try:
        worker.wait_log("refused the connection", timeout=20)
        wait_for(lambda: worker.log().count("refused the connection") >= 2, "a retry", 20)
        assert worker.alive()
        assert "wrong@" not in worker.log()  # credentials never reach the log
    finally:
        worker.stop()


def test_a_certificate_the_bridge_does_not_trust_is_refused(
    tmp_path: Path, secure_broker: tuple[Mosquitto, Path], redis_server: Redis
) -> None:
    broker, _ = secure_broker
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    url = f"mqtts://gateway:g4teway-secret@127.0.0.1:{broker.port}?ca={stranger}"
    worker = lone_worker(tmp_path, "untrusted", url, redis_server)
    try:
        worker.wait_log("CERTIFICATE_VERIFY_FAILED", timeout=20)
        assert worker.alive()
        assert "subscribed to" not in worker.log()
    finally:
        worker.stop()
