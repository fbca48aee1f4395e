"""Settings read at start-up: good values parse, bad ones fail naming the variable."""

import os
import socket
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from bridges.conf import MqttSettings
from gateway.conf import GatewaySettings
from gateway.jsonutil import parse_json
from gateway.shared import RedisTarget


def test_a_full_mqtt_url_parses() -> None:
    s = MqttSettings.from_url(
        "mqtts://dev%40ice:p%3Ass@broker.example:8884?ca=/etc/ca.pem&keepalive=15",
        gateway_id="gw1",
    )
    assert (s.host, s.port, s.tls, s.username, s.password) == (
        "broker.example",
        8884,
        True,
        "dev@ice",
        "p:ss",
    )
    assert (s.ca_certs, s.keepalive, s.client_id) == ("/etc/ca.pem", 15, "gw1-bridge")
    assert "p:ss" not in s.describe()


@pytest.mark.parametrize(("url", "port"), [("mqtt://h", 1883), ("mqtts://h", 8883)])
def test_default_ports(url: str, port: int) -> None:
    assert MqttSettings.from_url(url, gateway_id="g").port == port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1883", "scheme must be mqtt:// or mqtts://"),
        ("mqtt://", "names no host"),
        ("mqtt://h:99999", "MQTT_URL is invalid"),
        ("mqtt://h:port", "MQTT_URL is invalid"),
        ("mqtt://h/path", "has a path"),
        ("mqtt://h?colour=red", "unknown options"),
        ("mqtt://h?keepalive=1", "keepalive must be 5-3600"),
        ("mqtt://h?keepalive=x", "keepalive must be whole seconds"),
    ],
)
def test_bad_mqtt_urls_fail_naming_mqtt_url(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as error:
        MqttSettings.from_url(url, gateway_id="g")
    assert "MQTT_URL" in str(error.value)


def test_a_password_never_appears_in_the_error() -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        MqttSettings.from_url("http://user:secret@h", gateway_id="g")
    assert "secret" not in str(error.value)


def test_unset_mqtt_url_is_none_and_protocol_is_checked() -> None:
    assert MqttSettings.from_env(url=None, protocol="5", gateway_id="g") is None
    with pytest.raises(ImproperlyConfigured, match="MQTT_PROTOCOL"):
        MqttSettings.from_env(url=None, protocol="3", gateway_id="g")


@pytest.mark.parametrize("gateway_id", ["", "a b", "-x", "x" * 33, "a/b", "a#"])
def test_bad_gateway_ids_fail_naming_gateway_id(gateway_id: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_ID"):
        GatewaySettings(gateway_id=gateway_id)


@pytest.mark.parametrize("limit", [0, 1023, 16 * 1024 * 1024 + 1])
def test_frame_limit_out_of_range_fails_naming_it(limit: int) -> None:
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_MAX_FRAME_BYTES"):
        GatewaySettings(max_frame_bytes=limit)


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("max_payload_bytes", 1023, "GATEWAY_MAX_PAYLOAD_BYTES"),
        ("max_payload_bytes", 16 * 1024 * 1024 + 1, "GATEWAY_MAX_PAYLOAD_BYTES"),
        ("retained_max_topics", 0, "RETAINED_MAX_TOPICS"),
        ("retained_max_topics", 100_001, "RETAINED_MAX_TOPICS"),
    ],
)
def test_device_limits_out_of_range_fail_naming_them(field: str, value: int, name: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=name):
        GatewaySettings(**{field: value})


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "1e999", "[" * 100_000])
def test_json_that_browsers_could_not_read_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"JSON|range|deeply"):
        parse_json(text)


def client_id_on(monkeypatch: pytest.MonkeyPatch, hostname: str, template: str) -> str:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    settings = MqttSettings.from_env(
        url="mqtt://broker", protocol="5", gateway_id="g", client_id=template
    )
    assert settings is not None
    return settings.client_id


def test_mqtt_client_id_takes_the_host_name_for_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        client_id_on(monkeypatch, "3f2a9c1b7d4e", "g-bridge-{hostname}") == "g-bridge-3f2a9c1b7d4e"
    )
    assert client_id_on(monkeypatch, "worker.lan", "{hostname}") == "worker.lan"
    assert client_id_on(monkeypatch, "a", "{hostname}-{hostname}") == "a-a"
    assert client_id_on(monkeypatch, "ignored", "fixed-id") == "fixed-id"


@pytest.mark.parametrize(
    ("hostname", "template"),
    [
        ("x" * 60, "bridge-{hostname}"),  # longer than 64 once filled in
        ("has space", "bridge-{hostname}"),
        ("", "{hostname}"),
        ("h", "bridge-{host}"),  # an unknown placeholder
        ("h", "bridge/{hostname}"),
    ],
)
def test_a_client_id_that_is_invalid_once_filled_in_fails_naming_mqtt_client_id(
    monkeypatch: pytest.MonkeyPatch, hostname: str, template: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match="MQTT_CLIENT_ID") as error:
        client_id_on(monkeypatch, hostname, template)
    assert repr(template) in str(error.value)


@pytest.mark.parametrize("layer", ["pubsub", "PUBSUB", "anything"])
def test_the_retired_channel_layer_setting_stops_start_up_saying_what_to_do(layer: str) -> None:
    # REDIS_URL is never reached: settings fail first.
    started = start_up(CHANNEL_LAYER=layer, REDIS_URL="redis://127.0.0.1:9/0")
    assert started.returncode != 0
    assert "CHANNEL_LAYER is retired" in started.stderr
    assert "Remove the setting" in started.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,2", "give three numbers"),  # two of three
        ("0,10,10", "give three numbers"),  # 0 would turn the collector off: garbage would grow
        ("50000,0,10", "give three numbers"),
        ("a,b,c", "invalid literal"),
    ],
)
def test_bad_collector_thresholds_stop_start_up_naming_them(value: str, message: str) -> None:
    started = start_up(GATEWAY_GC_THRESHOLDS=value)
    assert started.returncode != 0
    assert "GATEWAY_GC_THRESHOLDS" in started.stderr
    assert message in started.stderr


@pytest.mark.parametrize("value", ["0", "100001", "many"])
def test_a_bad_handshake_limit_stops_start_up_naming_it(value: str) -> None:
    started = start_up(GATEWAY_WS_HANDSHAKES=value)
    assert started.returncode != 0
    assert "GATEWAY_WS_HANDSHAKES" in started.stderr


def test_every_process_collects_with_the_thresholds_set() -> None:
    started = start_up("import gc; print(gc.get_threshold())", GATEWAY_GC_THRESHOLDS="20000,15,5")
    assert (started.returncode, started.stdout.strip()) == (0, "(20000, 15, 5)")


def start_up(then: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """A process that sets Django up with ``env`` added to this one's, then runs ``then``."""
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {then}"],
        capture_output=True,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together"),
        ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m"}, "'s1' is not host:port"),
        ({"REDIS_SENTINELS": "s1:0,s2:1", "REDIS_SENTINEL_MASTER": "m"}, "'s1:0' is not"),
        ({"REDIS_SENTINELS": "s1:1,,s2:1", "REDIS_SENTINEL_MASTER": "m"}, "'' is not host:port"),
        (
            {
                "REDIS_SENTINELS": "s1:26379",
                "REDIS_SENTINEL_MASTER": "m",
                "REDIS_URL": "redis://:pw@redis-1:6379/0",
            },
            "REDIS_URL names a host (redis-1)",
        ),
        (
            {"REDIS_SENTINELS": "s1:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis:///x"},
            "REDIS_URL is invalid: the database must be a number",
        ),
        (
            {
                "REDIS_SENTINELS": "s1:1",
                "REDIS_SENTINEL_MASTER": "m",
                "REDIS_URL": "rediss://:pw@/0?ssl_ca_cert=/ca.pem",
            },
            "unknown options ['ssl_ca_cert']: with rediss://, only ssl_ca_certs",
        ),
        ({"REDIS_SHARDS": "b=redis://h:6379/0"}, "set REDIS_URL (or REDIS_SENTINELS) too"),
        (
            {"REDIS_URL": "redis://h/0", "REDIS_SHARDS": "b=http://h:6379"},
            "REDIS_SHARDS is invalid: 'b=http://h:6379' is not name=redis://",
        ),
        (
            {"REDIS_URL": "redis://h/0", "REDIS_SHARDS": "redis://h2:6379/0"},
            "REDIS_SHARDS is invalid: 'redis://h2:6379/0' is not name=redis://",
        ),
        (
            {"REDIS_URL": "redis://h/0", "REDIS_SHARDS": "main=redis://h2/0"},
            "'main' is not a shard's name",
        ),
        (
            {"REDIS_URL": "redis://h/0", "REDIS_SHARDS": "b=redis://h2/0,b=redis://h3/0"},
            "shard 'b' is named twice",
        ),
        (
            {
                "REDIS_SENTINELS": "s1:1",
                "REDIS_SENTINEL_MASTER": "m",
                "REDIS_SHARDS": "b=redis://:pw@h2/0",
            },
            "a shard is the name of a master they monitor",
        ),
        ({"REDIS_REPLICA_WAIT_MS": "-1"}, "REDIS_REPLICA_WAIT_MS=-1 is out of range"),
        ({"REDIS_REPLICA_WAIT_MS": "soon"}, "REDIS_REPLICA_WAIT_MS is invalid"),
    ],
)
def test_bad_redis_settings_stop_start_up_naming_them(env: dict[str, str], message: str) -> None:
    started = start_up(**env)
    assert started.returncode != 0
    assert message in started.stderr
    assert "pw" not in started.stderr.replace("password", "")


def test_sentinels_take_the_scheme_password_and_database_of_redis_url() -> None:
    started = start_up(
        "from django.conf import settings; "
        "import json; print(json.dumps(settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']))",
        REDIS_SENTINELS="s1:26379, [::1]:26380",
        REDIS_SENTINEL_MASTER="gateway",
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
        REDIS_URL="rediss://:p%40ss@/2?ssl_ca_certs=/etc/ca.pem",
    )
    assert started.returncode == 0, started.stderr
    (host,) = parse_json(started.stdout)
    # channels-redis follows the master through the same Sentinels, over TLS with the password
    assert host["sentinels"] == [["s1", 26379], ["::1", 26380]]
    assert (host["master_name"], host["password"], host["db"], host["ssl"]) == (
        "gateway",
        "p@ss",
        2,
        True,
    )
    assert host["ssl_ca_certs"] == "/etc/ca.pem"  # a private CA, for servers and Sentinels
    assert host["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert host["sentinel_kwargs"]["ssl"] is True
    assert host["sentinel_kwargs"]["ssl_ca_certs"] == "/etc/ca.pem"


def test_a_redis_target_never_shows_its_password() -> None:
    plain = RedisTarget("redis://:secret@redis-1:6380/0")
    sentinels = RedisTarget("redis://:secret@/0", sentinels=(("s1", 26379),), master="gateway")
    assert plain.describe() == "redis://redis-1:6380"
    assert sentinels.describe() == "master 'gateway' of Sentinels s1:26379"


def test_shards_on_sentinels_are_masters_they_monitor_with_redis_urls_credentials() -> None:
    started = start_up(
        "from gateway.shared import shard_names, shard_targets; "
        "print([(n, t.master, t.url) for n, t in zip(shard_names(), shard_targets())])",
        REDIS_SENTINELS="s1:26379",
        REDIS_SENTINEL_MASTER="gateway",
        REDIS_URL="redis://:secret@/1",
        REDIS_SHARDS="shard-b, shard-c",
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == str(
        [
            ("main", "gateway", "redis://:secret@/1"),
            ("shard-b", "shard-b", "redis://:secret@/1"),
            ("shard-c", "shard-c", "redis://:secret@/1"),
        ]
    )
