"""The commands scripts and deployments use for devices, policies and grants."""

from io import StringIO

import pytest
from django.contrib.auth.hashers import check_password
from django.core.management import CommandError, call_command

from gateway.devices import authenticate_device
from gateway.models import Device, RoomGrant, RoomPolicy


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_add_device_prints_the_secret_once_and_keeps_only_its_hash() -> None:
    secret = run("add_device", "pump-7", "--grant", "plant:write").splitlines()[-1]
    device = Device.objects.get(name="pump-7")
    assert secret not in device.secret_hash
    assert check_password(secret, device.secret_hash)
    assert authenticate_device("pump-7", secret) == device
    assert RoomGrant.objects.get(device=device).access == "write"
    rotated = run("add_device", "pump-7", "--rotate").splitlines()[-1]
    assert rotated != secret
    assert authenticate_device("pump-7", secret) is None
    assert authenticate_device("pump-7", rotated) == device


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add_device", "gateway"), "reserved"),
        (("add_device", "a/b"), "Use 1-64"),
        (("add_device", "x", "--grant", "plant"), "ROOM:read or ROOM:write"),
        (("add_device", "x", "--grant", "bad room:read"), "room"),
        (("revoke_device", "nobody"), "no device"),
        (("grant", "plant", "--device", "nobody", "--read"), "no such"),
        (("room_policy", "a b", "--private"), "Use 1-64"),
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Device.objects.exists()
    assert not RoomGrant.objects.exists()
    assert not RoomPolicy.objects.exists()


@pytest.mark.django_db
def test_policies_grants_and_revocation() -> None:
    run("add_device", "panel-1")
    assert run("room_policy", "plant", "--private").strip() == "plant (private)"
    assert "may read" in run("grant", "plant", "--device", "panel-1", "--read")
    assert "may write" in run("grant", "plant", "--device", "panel-1", "--write")
    assert RoomGrant.objects.get().access == "write"
    run("grant", "plant", "--device", "panel-1", "--none")
    assert not RoomGrant.objects.exists()
    run("room_policy", "plant", "--public", "--anonymous", "read")
    policy = RoomPolicy.objects.get()
    assert (policy.private, policy.anonymous) == (False, "read")
    run("revoke_device", "panel-1")
    assert not Device.objects.get().is_active
