"""The pages: the index lists only the rooms a visitor may read."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from gateway.models import Room, RoomGrant, RoomPolicy

pytestmark = pytest.mark.django_db


def test_the_index_lists_private_rooms_only_to_their_members(client: Client) -> None:
    Room.objects.create(name="open-room")
    Room.objects.create(name="secret-room")
    RoomPolicy.objects.create(room="secret-room", private=True)
    member = get_user_model().objects.create(username="member")
    RoomGrant.objects.create(room="secret-room", user=member, access="read")
    anonymous = client.get("/").content.decode()
    assert "open-room" in anonymous
    assert "secret-room" not in anonymous
    client.force_login(member)
    assert "secret-room" in client.get("/").content.decode()


@pytest.mark.parametrize(("query", "status"), [("?room=kitchen", 302), ("?room=a/b", 400)])
def test_the_index_form_enters_valid_rooms_and_explains_bad_names(
    client: Client, query: str, status: int
) -> None:
    response = client.get(f"/{query}")
    assert response.status_code == status
    if status == 302:
        assert response["Location"] == "/rooms/kitchen/"
    else:
        assert "is not a room name" in response.content.decode()
