"""What the management commands share: saving a model as the admin would, or saying why not."""

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db.models import Model

from gateway.devices import validation_message


def save_checked(instance: Model) -> None:
    """Validate ``instance`` as a model form would, then save it; a `CommandError` if invalid."""
    try:
        instance.full_clean()
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from exc
    instance.save()
