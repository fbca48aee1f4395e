"""Devices as identities: registered, given a secret once, checked, revoked.

A device's secret is shown once, when it is made, and stored only as a hash by Django's
password hashers. Brokers that keep their own copy of credentials (Mosquitto's dynamic
security plugin) are given the secret through `secret_set` at that moment, by whichever edge
listens for it; brokers that ask the gateway (HTTP hooks, the embedded broker) check it with
`authenticate_device`.
"""

import secrets

from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.dispatch import Signal

from gateway.errors import GatewayError
from gateway.models import Device, RoomGrant

# Sent with ``name`` and ``secret`` once a device's new secret is stored (after the commit).
secret_set = Signal()
# Sent with ``name`` when a device is revoked or deleted (after the commit).
device_revoked = Signal()


class SecretNotDeliveredError(GatewayError):
    """A broker that keeps its own credentials could not be given a device's new secret."""

    code = "secret_not_delivered"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the broker could not be given device {name}'s secret: once it is reachable, "
            f"run manage.py add_device {name} --rotate"
        )
        self.name = name


SECRET_BYTES = 24  # 32 URL-safe characters
MAX_SECRET_LENGTH = 256


def add_device(name: str, grants: dict[str, str] | None = None) -> tuple[Device, str]:
    """Register device ``name`` with ``grants`` (room -> ``read``/``write``); return its secret.

    Raises:
        ValidationError: the name is invalid, reserved or taken, or a grant is invalid.
    """
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with transaction.atomic():
        device = Device(name=name, secret_hash=make_password(secret))
        device.full_clean()
        device.save()
        for room, access in (grants or {}).items():
            grant = RoomGrant(room=room, device=device, access=access)
            grant.full_clean()
            grant.save()
        transaction.on_commit(lambda: secret_set.send(Device, name=name, secret=secret))
    return device, secret


def rotate_secret(device: Device) -> str:
    """Give ``device`` a new secret (the old one stops working); return it."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with transaction.atomic():
        device.secret_hash = make_password(secret)
        device.save(update_fields=["secret_hash", "updated_at"])
        name = device.name
        transaction.on_commit(lambda: secret_set.send(Device, name=name, secret=secret))
    return secret


def revoke_device(device: Device) -> None:
    """Mark ``device`` inactive: brokers disconnect it and refuse it from then on."""
    with transaction.atomic():
        device.is_active = False
        device.save(update_fields=["is_active", "updated_at"])
        name = device.name
        transaction.on_commit(lambda: device_revoked.send(Device, name=name))


def authenticate_device(name: str, secret: str) -> Device | None:
    """The active device ``name`` if ``secret`` is its secret; None otherwise."""
    if not name or len(secret) > MAX_SECRET_LENGTH:
        return None
    device = Device.objects.filter(name=name).first()
    if device is None:
        # As long as a wrong secret: no telling registered names apart by timing.
        make_password(secret)
        return None
    if not check_password(secret, device.secret_hash) or not device.is_active:
        return None
    return device


def validation_message(exc: ValidationError) -> str:
    """One line from a model's validation error, for a command line or an admin message."""
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in exc.message_dict.items())
    return " ".join(exc.messages)
