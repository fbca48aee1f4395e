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
