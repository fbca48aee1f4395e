"""Rooms the gateway has seen."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from gateway.rooms import ROOM_PATTERN


class Room(models.Model):
    """A room that has had at least one message; rooms come into being by use."""

    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When a message last entered it (recorded at most once a minute per process).
    last_active = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class RetainedState(models.Model):
    """The last retained message of one device topic, kept as its room's state."""

    room = models.CharField(max_length=64)
    topic = models.CharField(max_length=512)
    envelope = models.JSONField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("room", "topic"), name="one_state_per_room_topic"),
        )
        indexes = (models.Index(fields=("room", "updated_at")),)

    def __str__(self) -> str:
        return f"{self.room} {self.topic}"


MESSAGE_TABLE = "gateway_message"  # named here: the history writer inserts rows in plain SQL


class Message(models.Model):
    """A message of a room's history; ``seq`` orders it within the room."""

    room = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    message_id = models.CharField(max_length=64)
    envelope = models.JSONField()
    size = models.PositiveIntegerField(default=0)  # the envelope's bytes, as encoded
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("room", "seq"), name="one_message_per_seq"),
            # A message redelivered after a crash is stored once.
            models.UniqueConstraint(fields=("room", "message_id"), name="one_copy_per_message"),
        )
        ordering = ("room", "seq")
        db_table = MESSAGE_TABLE

    def __str__(self) -> str:
        return f"{self.room} #{self.seq}"


# Room access and API tokens.


ACCESS_CHOICES = (("none", "none"), ("read", "read"), ("write", "write"))
GRANT_CHOICES = (("read", "read"), ("write", "write"))

# A policy or grant for a name that could never be a room would never apply: refuse it.
_room_name = RegexValidator(
    rf"\A{ROOM_PATTERN}\Z",
    "Use 1-64 letters, digits, '_', '.' and '-', not starting with '.' or '-'.",
)


class RoomPolicy(models.Model):
    """Who may read and write a room; a room without a policy is public and writable by all.

    The rules are in `gateway.access`.
    """

    room = models.CharField(max_length=64, unique=True, validators=[_room_name])
    private = models.BooleanField(
        default=False, help_text="Only superusers and users or groups with a grant get in."
    )
    anonymous = models.CharField(
        max_length=5,
        choices=ACCESS_CHOICES,
        default="write",
        help_text="What visitors who are not logged in get (public rooms only).",
    )
    authenticated = models.CharField(
        max_length=5,
        choices=ACCESS_CHOICES,
        default="write",
        help_text=(
            "What any logged-in or token user, and any registered device, gets (public rooms "
            "only); grants add to it."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("room",)
        verbose_name_plural = "room policies"

    def __str__(self) -> str:
        if self.private:
            return f"{self.room} (private)"
        return f"{self.room} (anonymous {self.anonymous}, users {self.authenticated})"


# A device's name is its MQTT user name and its sender level in topics: one topic level, safe in
# a Mosquitto ACL (no '+', '#', '/', '$', NUL) and as a room-like name.
DEVICE_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
# Sender levels the gateway itself uses: a device of that name could pass for the gateway.
RESERVED_DEVICE_NAMES = frozenset({"gateway", "status"})


def _not_reserved(name: str) -> None:
    if name.lower() in RESERVED_DEVICE_NAMES:
        raise ValidationError(f"{name!r} is reserved by the gateway: choose another name.")


class Device(models.Model):
    """An MQTT device as an identity: its name is its MQTT user name and its sender level.

    Only a hash of its secret is kept (Django's password hashers); grants to rooms come
    through `RoomGrant`, to the device itself or to one of its groups.
    """

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[
            RegexValidator(
                rf"\A{DEVICE_NAME_PATTERN}\Z",
                "Use 1-64 letters, digits, '_', '.' and '-', not starting with '.' or '-'.",
            ),
            _not_reserved,
        ],
        help_text="The device's MQTT user name, and its level in topics (rooms/<room>/<name>).",
    )
    secret_hash = models.CharField(max_length=256, editable=False)
    is_active = models.BooleanField(
        default=True, help_text="An inactive device is disconnected and may not connect."
    )
    groups = models.ManyToManyField("auth.Group", blank=True, related_name="devices")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name if self.is_active else f"{self.name} (revoked)"


class RoomGrant(models.Model):
    """Access to one room for one user, one device, or every member of one group."""

    room = models.CharField(max_length=64, validators=[_room_name])
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="room_grants",
    )
    group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="room_grants",
    )
    device = models.ForeignKey(
        Device, null=True, blank=True, on_delete=models.CASCADE, related_name="room_grants"
    )
    access = models.CharField(max_length=5, choices=GRANT_CHOICES, default="read")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = (
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True, device__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=False, device__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=True, device__isnull=False)
                ),
                name="grant_to_user_group_or_device",
                violation_error_message="A grant names one user, one group or one device.",
            ),
            models.UniqueConstraint(fields=("room", "user"), name="one_grant_per_room_user"),
            models.UniqueConstraint(fields=("room", "group"), name="one_grant_per_room_group"),
            models.UniqueConstraint(fields=("room", "device"), name="one_grant_per_room_device"),
        )
        ordering = ("room", "id")

    def __str__(self) -> str:
        if self.user_id is not None:
            who = f"user {self.user}"
        elif self.device_id is not None:
            who = f"device {self.device}"
        else:
            who = f"group {self.group}"
        return f"{self.room}: {who} may {self.access}"


class ApiToken(models.Model):
    """A bearer token for programs; only its SHA-256 digest is stored, never the token."""

    name = models.CharField(max_length=100, help_text="What the token is for.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    prefix = models.CharField(
        max_length=12, db_index=True, help_text="The token's first characters, to recognise it."
    )
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        """Whether the token has not been revoked (its user may still be inactive)."""
        return self.revoked_at is None
