"""Rooms the gateway has seen."""

from django.db import models


class Room(models.Model):
    """A room that has had at least one message; rooms come into being by use."""

    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

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
