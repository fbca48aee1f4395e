"""``manage.py add_device <name> [--grant ROOM:read|write ...]``: register an MQTT device."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.devices import SecretNotDeliveredError, add_device, rotate_secret, validation_message
from gateway.models import Device


def parse_grant(value: str) -> tuple[str, str]:
    """``ROOM:read`` or ``ROOM:write``."""
    room, _, access = value.rpartition(":")
    if not room or access not in ("read", "write"):
        raise CommandError(f"--grant {value!r}: use ROOM:read or ROOM:write")
    return room, access


class Command(BaseCommand):
    help = (
        "Registers a device: its name is its MQTT user name and its level in topics "
        "(rooms/<room>/<name>/...). Prints the device's secret, once, on the last line: only a "
        "hash of it is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'")
        parser.add_argument(
            "--grant",
            action="append",
            default=[],
            metavar="ROOM:read|write",
            help="a room the device may read or write (repeat for several)",
        )
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="give an existing device a new secret (the old one stops working)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        grants = dict(parse_grant(value) for value in options["grant"])
        try:
            if options["rotate"]:
                if grants:
                    raise CommandError("--rotate takes no --grant: use the grant command")
                device = Device.objects.filter(name=options["name"]).first()
                if device is None:
                    raise CommandError(f"no device named {options['name']!r}")
                secret = rotate_secret(device)
            else:
                device, secret = add_device(options["name"], grants)
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from exc
        except SecretNotDeliveredError as exc:
            raise CommandError(str(exc)) from exc
        for room, access in grants.items():
            self.stderr.write(f"{device.name} may {access} room {room}")
        done = "has a new secret" if options["rotate"] else "registered"
        self.stderr.write(f"Device {device.name} {done}. Its secret (shown once):")
        self.stdout.write(secret)
