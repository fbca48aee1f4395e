"""``manage.py bridge_rules [--topic TOPIC ...] [--room ROOM ...]``: the bridge's rules in force.

Without options it prints the rules (``BRIDGE_RULES``) as a table; ``--topic`` shows where a
device topic leads, ``--room`` where a room's messages are published.
"""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bridges.rules import RuleSet
from gateway.errors import InvalidRoomError
from gateway.rooms import validate_room

COLUMNS: tuple[str, ...] = ("name", "direction", "subscription", "topic", "room", "sender")
COLUMNS += ("publish_to", "qos", "retain", "codec", "presence")


class Command(BaseCommand):
    help = (
        "Prints the bridge's topic <-> room rules (BRIDGE_RULES). --topic shows which rules a "
        "device topic matches and the room it feeds; --room shows where a room's messages go."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--topic", action="append", default=[], help="an MQTT topic to route (repeatable)"
        )
        parser.add_argument(
            "--room", action="append", default=[], help="a room to route outbound (repeatable)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rules: RuleSet = settings.BRIDGE_RULES
        topics: list[str] = options["topic"]
        rooms: list[str] = options["room"]
        for room in rooms:
            try:
                validate_room(room)
            except InvalidRoomError as exc:
                raise CommandError(str(exc)) from exc
        for topic in topics:
            if not topic or {"+", "#", "\x00"} & set(topic):
                raise CommandError(f"invalid topic {topic!r}: a topic name has no '+', '#' or NUL")
        if not topics and not rooms:
            self._table(rules)
        for topic in topics:
            self.stdout.write(f"topic {topic}")
            found = rules.inbound(topic)
            for inbound in found:
                sender = inbound.sender or "none"
                what = "presence of" if inbound.rule.presence else "sender"
                line = f"room {inbound.room}, {what} {sender} (codec {inbound.rule.codec})"
                self.stdout.write(f"  {inbound.rule.name}: {line}")
            if not found:
                self.stdout.write("  no rule: dropped (counted)")
        for room in rooms:
            self.stdout.write(f"room {room}")
            published = rules.outbound(room)
            for rule, topic in published:
                retain = ", retained" if rule.retain else ""
                self.stdout.write(f"  {rule.name}: {topic} (qos {rule.qos}{retain})")
            if not published:
                self.stdout.write("  not published")

    def _table(self, rules: RuleSet) -> None:
        rows: list[tuple[str, ...]] = [COLUMNS]
        for rule in rules.rules:
            values = {
                **{column: getattr(rule, column, None) for column in COLUMNS},
                "subscription": rule.subscription() if rule.topic is not None else None,
                "retain": "yes" if rule.retain else "no",
                "presence": "yes" if rule.presence else "no",
            }
            rows.append(tuple("-" if values[c] is None else str(values[c]) for c in COLUMNS))
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
