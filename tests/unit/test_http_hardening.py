"""The pages' Content-Security-Policy, and the throttle on logins."""

import pytest
from django.test import Client

from protocols.middleware import CONTENT_SECURITY_POLICY, LOGIN_ATTEMPTS


@pytest.mark.django_db
def test_the_gateway_pages_carry_a_content_security_policy(client: Client) -> None:
    for path in ("/", "/rooms/kitchen/", "/rooms/a%20b/"):
        assert client.get(path)["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "Content-Security-Policy" not in client.get("/admin/login/")
    assert "Content-Security-Policy" not in client.get("/healthz")  # JSON, not a page


@pytest.mark.django_db
def test_logins_past_the_limit_are_refused_a_while_per_address(client: Client) -> None:
    attempt = {"username": "nobody", "password": "guess"}
    for _ in range(LOGIN_ATTEMPTS):
        assert (
            client.post("/accounts/login/", attempt, REMOTE_ADDR="198.51.100.4").status_code == 200
        )
    refused = client.post("/admin/login/", attempt, REMOTE_ADDR="198.51.100.4")
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_logins"
    assert refused["Retry-After"] == "60"
    # Another address is not held back.
    assert client.post("/accounts/login/", attempt, REMOTE_ADDR="198.51.100.5").status_code == 200
