"""/readyz and /metrics: the status to anyone, the detail to this machine or the ops token."""

from typing import Any

import pytest
from django.test import Client

STRANGER = {"REMOTE_ADDR": "203.0.113.9"}
TOKEN = "ops-token-for-the-tests-0123456789"


@pytest.mark.django_db
def test_this_machine_sees_the_detail(client: Client) -> None:
    ready = client.get("/readyz")
    assert set(ready.json()) == {"status", "checks"}
    assert client.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_a_stranger_gets_the_status_and_no_detail(client: Client, settings: Any) -> None:
    settings.OPS_TOKEN = TOKEN
    local = client.get("/readyz")
    ready = client.get("/readyz", **STRANGER)
    assert ready.status_code == local.status_code  # the same status, whatever it is
    assert ready.json() == {"status": local.json()["status"]}
    metrics = client.get("/metrics", **STRANGER)
    assert metrics.status_code == 403
    assert metrics["Content-Type"] == "application/json"
    wrong = {"HTTP_AUTHORIZATION": "Bearer not-the-token", **STRANGER}
    assert client.get("/metrics", **wrong).status_code == 403


@pytest.mark.django_db
def test_the_ops_token_opens_the_detail_from_elsewhere(client: Client, settings: Any) -> None:
    settings.OPS_TOKEN = TOKEN
    authorised = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **STRANGER}
    assert "checks" in client.get("/readyz", **authorised).json()
    metrics = client.get("/metrics", **authorised)
    assert metrics.status_code == 200
    assert metrics["Content-Type"].startswith("text/plain; version=0.0.4")
