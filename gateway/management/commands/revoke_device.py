"""``manage.py revoke_device <name>``: a device may no longer connect."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.devices import revoke_device
from gateway.models import Device


class Command(BaseCommand):
    help = (
        "Revokes a device: brokers disconnect it within seconds and refuse it from then on. "
        "Its grants are kept; `add_device` cannot reuse the name."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the device's name")

    def handle(self, *args: Any, **options: Any) -> None:
        device = Device.objects.filter(name=options["name"]).first()
        if device is None:
            raise CommandError(f"no device named {options['name']!r}")
        if not device.is_active:
            self.stderr.write(f"{device.name} was already revoked")
            return
        revoke_device(device)
        self.stderr.write(f"{device.name} revoked")
