"""``manage.py issue_token <username> <name>``: give a program an API token."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.tokens import issue_token


class Command(BaseCommand):
    help = (
        "Issues an API token for a user and prints it once: only its digest is stored. "
        "The token goes to standard output alone, so TOKEN=$(manage.py issue_token ...) works."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the user the token acts as")
        parser.add_argument("name", help="what the token is for, e.g. 'greenhouse display'")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        user_model = get_user_model()
        try:
            user = user_model.objects.get_by_natural_key(username)
        except user_model.DoesNotExist as exc:
            raise CommandError(f"no user named {username!r}") from exc
        try:
            token, plaintext = issue_token(user, options["name"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(plaintext)
        self.stderr.write(
            f"Token {token.name!r} (prefix {token.prefix}) for {username}. Copy it now: it "
            "cannot be shown again."
        )
        if not user.is_active:
            self.stderr.write(f"{username} is inactive: the token works only once they are active.")
