"""The pages: the index lists only the rooms a visitor may read."""

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpResponse
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


def assert_gateway_page(response: HttpResponse, status: int, *texts: str) -> str:
    """The gateway's own page (its title and header), with a link back to the index."""
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    body = response.content.decode()
    assert "· Gateway</title>" in body, body[:500]
    assert 'class="brand" href="/"' in body
    assert 'class="back" href="/"' in body
    assert "Page not found at" not in body  # Django's default page
    for text in texts:
        assert text in body, text
    return body


def test_an_invalid_room_name_gets_the_gateways_404_page(client: Client) -> None:
    body = assert_gateway_page(
        client.get("/rooms/my%20room/"), 404, "No such room", "&#x27;my room&#x27; is not a"
    )
    assert 'id="room"' not in body  # not the room's live page


def test_an_unknown_path_gets_the_gateways_404_page(client: Client) -> None:
    assert_gateway_page(client.get("/rooms/a/b/"), 404, "Not found")
    assert_gateway_page(client.get("/no-such-page"), 404, "Not found")


def test_a_room_name_with_markup_is_shown_as_text(client: Client) -> None:
    body = assert_gateway_page(client.get("/rooms/%3Cimg%20src=x%3E/"), 404, "No such room")
    assert "<img src=x>" not in body
    assert "&lt;img src=x&gt;" in body


def test_a_private_room_is_refused_with_the_gateways_403_page(client: Client) -> None:
    RoomPolicy.objects.create(room="vault", private=True)
    body = assert_gateway_page(client.get("/rooms/vault/"), 403, "No access to this room")
    assert 'href="/accounts/login/?next=/rooms/vault/"' in body.replace("%2F", "/")
    assert 'id="room"' not in body
    outsider = get_user_model().objects.create(username="outsider")
    client.force_login(outsider)
    body = assert_gateway_page(client.get("/rooms/vault/"), 403, "You may not read room vault")
    assert 'class="login"' not in body  # already signed in
    RoomGrant.objects.create(room="vault", user=outsider, access="read")
    member = client.get("/rooms/vault/")
    assert member.status_code == 200
    assert 'id="room"' in member.content.decode()


def test_a_public_room_closed_to_anonymous_visitors_asks_them_to_log_in(client: Client) -> None:
    RoomPolicy.objects.create(room="lobby", anonymous="none", authenticated="read")
    assert_gateway_page(client.get("/rooms/lobby/"), 403, "Log in")
    client.force_login(get_user_model().objects.create(username="visitor"))
    assert client.get("/rooms/lobby/").status_code == 200


def test_rooms_without_a_policy_stay_open_to_everyone(client: Client) -> None:
    response = client.get("/rooms/kitchen/")
    assert response.status_code == 200
    assert 'id="room"' in response.content.decode()
