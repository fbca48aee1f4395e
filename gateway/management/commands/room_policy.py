"""``manage.py room_policy <room> [--private|--public] [--anonymous none|read|write]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gateway.management.checked import save_checked
from gateway.models import RoomPolicy

LEVELS = ("none", "read", "write")


class Command(BaseCommand):
    help = (
        "Sets a room's policy (creating it if needed) and prints it. A private room admits only "
        "grants; a public room gives anonymous visitors and clients --anonymous, and signed-in "
        "users and registered devices --authenticated, grants adding to it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room")
        visibility = parser.add_mutually_exclusive_group()
        visibility.add_argument("--private", action="store_true", help="grants only")
        visibility.add_argument("--public", action="store_true", help="the levels below apply")
        parser.add_argument("--anonymous", choices=LEVELS, help="what anonymous clients get")
        parser.add_argument(
            "--authenticated", choices=LEVELS, help="what signed-in users and devices get"
        )
        parser.add_argument("--delete", action="store_true", help="remove the policy")

    def handle(self, *args: Any, **options: Any) -> None:
        room: str = options["room"]
        if options["delete"]:
            deleted, _ = RoomPolicy.objects.filter(room=room).delete()
            self.stdout.write(f"{room}: no policy (public, anyone may write)" if deleted else "")
            return
        policy = RoomPolicy.objects.filter(room=room).first() or RoomPolicy(room=room)
        if options["private"]:
            policy.private = True
        if options["public"]:
            policy.private = False
        if options["anonymous"]:
            policy.anonymous = options["anonymous"]
        if options["authenticated"]:
            policy.authenticated = options["authenticated"]
        save_checked(policy)
        self.stdout.write(str(policy))
