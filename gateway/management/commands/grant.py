"""``manage.py grant <room> (--user U | --group G | --device D) (--read | --write | --none)``."""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Model

from gateway.management.checked import save_checked
from gateway.models import Device, RoomGrant


class Command(BaseCommand):
    help = (
        "Gives a user, a group or a device read or write access to a room; --none takes the "
        "grant away. Open sockets and MQTT connections follow within seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room")
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", metavar="USERNAME")
        who.add_argument("--group", metavar="NAME")
        who.add_argument("--device", metavar="NAME")
        level = parser.add_mutually_exclusive_group(required=True)
        level.add_argument("--read", dest="access", action="store_const", const="read")
        level.add_argument("--write", dest="access", action="store_const", const="write")
        level.add_argument("--none", dest="access", action="store_const", const="none")

    def handle(self, *args: Any, **options: Any) -> None:
        room: str = options["room"]
        field, holder = self._holder(options)
        if options["access"] == "none":
            deleted, _ = RoomGrant.objects.filter(room=room, **{field: holder}).delete()
            self.stdout.write(
                f"{room}: {field} {holder} has no grant" + ("" if deleted else " (had none)")
            )
            return
        grant = RoomGrant.objects.filter(room=room, **{field: holder}).first()
        grant = grant or RoomGrant(room=room, **{field: holder})
        grant.access = options["access"]
        save_checked(grant)
        self.stdout.write(str(grant))

    def _holder(self, options: dict[str, Any]) -> tuple[str, Model]:
        try:
            if options["user"] is not None:
                user_model = get_user_model()
                return "user", user_model.objects.get_by_natural_key(options["user"])
            if options["group"] is not None:
                return "group", Group.objects.get(name=options["group"])
            return "device", Device.objects.get(name=options["device"])
        except (Group.DoesNotExist, Device.DoesNotExist) as exc:
            raise CommandError(f"no such group or device: {exc}") from exc
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user named {options['user']!r}") from exc
