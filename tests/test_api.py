"""The operator's API through Starlette's TestClient, on every backend: every route and every error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from chat.app import create_app
from chat.settings import Settings
from tests import standins
from tests.standins import ROOM, drain, link_up, receive, receive_type, serve

KEY = "operator-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on an app with the API on, its backend's pub/sub link up."""
    with serve(settings.replace(api_key=KEY)) as test_client:
        link_up(test_client)
        yield test_client


@contextmanager
def joined(client: TestClient, name: str, room: str = ROOM) -> Iterator[tuple[WebSocketTestSession, dict[str, Any]]]:
    """A socket in ``room`` as ``name``, and its welcome frame."""
    with standins.joined(client, f"/ws/{room}?name={name}") as joined_socket:
        yield joined_socket


def say(session: WebSocketTestSession, text: str) -> int:
    """Send a message and return its seq, once both its ack and its echo came (on Redis in either order)."""
    session.send_json({"type": "message", "text": text, "ref": text})
    acked = echoed = None
    while acked is None or echoed != acked:
        frame = receive(session)
        if frame["type"] == "ack":
            acked = frame["seq"]
        elif frame["type"] == "message" and frame["text"] == text:
            echoed = frame["seq"]
    assert isinstance(acked, int)
    return acked


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["type"], body["code"]) == ("error", code), body
    assert body["detail"]


# --- off, and the key -------------------------------------------------------------------------------


def test_the_api_is_off_without_a_key() -> None:
    """No CHAT_API_KEY: /api does not exist."""
    with TestClient(create_app(Settings())) as plain:
        assert plain.get("/api/rooms", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/rooms"),
        ("GET", f"/api/rooms/{ROOM}"),
        ("GET", f"/api/rooms/{ROOM}/history"),
        ("POST", f"/api/rooms/{ROOM}/messages"),
        ("DELETE", f"/api/rooms/{ROOM}/members/x"),
    ],
)
def test_a_wrong_or_missing_key_gets_401(client: TestClient, method: str, path: str, headers: dict[str, str]) -> None:
    """Every route answers 401 unauthorized, with WWW-Authenticate, to a wrong or missing key."""
    response = client.request(method, path, headers=headers, json={"text": "x"})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_key_counts_only_in_the_first_authorization_header(client: TestClient) -> None:
    """Unlike member tokens, the operator key is not taken from ``?token=``, nor from a later header."""
    response = client.get(f"/api/rooms?token={KEY}")
    assert_error(response, 401, "unauthorized")
    headers = [("authorization", f"Basic {KEY}"), ("authorization", f"Bearer {KEY}")]
    response = client.get("/api/rooms", headers=httpx.Headers(headers))
    assert_error(response, 401, "unauthorized")
    assert client.get("/api/rooms", headers={"Authorization": f"bearer  {KEY} "}).status_code == 200


# --- listing -------------------------------------------------------------------------------------------


def test_rooms_lists_rooms_with_member_counts(client: TestClient) -> None:
    """GET /api/rooms: every room the backend keeps, with its members counted."""
    with joined(client, "ann"), joined(client, "bob"), joined(client, "cy", "other"):
        rooms = client.get("/api/rooms", headers=AUTH).json()["rooms"]
    assert {"room": ROOM, "members": 2} in rooms
    assert {"room": "other", "members": 1} in rooms


def test_a_room_shows_its_members(client: TestClient) -> None:
    """GET /api/rooms/{room}: the members with id and name."""
    with joined(client, "ann") as (_, ann), joined(client, "bob") as (_, bob):
        body = client.get(f"/api/rooms/{ROOM}", headers=AUTH).json()
    assert body["room"] == ROOM
    assert sorted(body["members"], key=lambda member: member["name"]) == [ann["you"], bob["you"]]


def test_an_unknown_room_gets_404(client: TestClient) -> None:
    """A room the backend keeps nothing of (or an invalid name) is 404 not_found on every room route."""
    for method, path in [
        ("GET", "/api/rooms/never-used"),
        ("GET", "/api/rooms/never-used/history"),
        ("POST", "/api/rooms/never-used/messages"),
        ("DELETE", "/api/rooms/never-used/members/x"),
        ("GET", "/api/rooms/-invalid-"),
    ]:
        assert_error(client.request(method, path, headers=AUTH, json={"text": "x"}), 404, "not_found")


# --- history -----------------------------------------------------------------------------------------------


def test_history_gives_the_messages_oldest_first(client: TestClient) -> None:
    """GET history: stored message frames, oldest first; before and limit page back."""
    with joined(client, "ann") as (ann, _):
        for index in range(1, 6):
            say(ann, f"m{index}")
    body = client.get(f"/api/rooms/{ROOM}/history", headers=AUTH).json()
    assert [message["text"] for message in body["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    assert body["messages"][0]["from"]["name"] == "ann"
    page = client.get(f"/api/rooms/{ROOM}/history?before=4&limit=2", headers=AUTH).json()
    assert [message["seq"] for message in page["messages"]] == [2, 3]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "before=0", "before=-1", "before=1.5"])
def test_bad_history_parameters_get_422(client: TestClient, query: str) -> None:
    """before must be >= 1 and limit 1-100, as in the protocol."""
    with joined(client, "ann"):
        assert_error(client.get(f"/api/rooms/{ROOM}/history?{query}", headers=AUTH), 422, "bad_request")


# --- posting -----------------------------------------------------------------------------------------------


def test_a_posted_message_reaches_members_like_any_other(client: TestClient) -> None:
    """POST messages: {"seq"} back; every member gets a message frame from the system sender, in seq order."""
    with joined(client, "ann") as (ann, _):
        assert say(ann, "before") == 1
        response = client.post(f"/api/rooms/{ROOM}/messages", headers=AUTH, json={"text": "maintenance at 5"})
        assert response.status_code == 200
        assert response.json() == {"seq": 2}
        message = receive_type(ann, "message")
        assert (message["seq"], message["text"]) == (2, "maintenance at 5")
        assert message["from"] == {"id": "system", "name": "system"}


def test_a_posted_message_may_name_its_sender(client: TestClient) -> None:
    """``name`` sets the display name of the system sender; the message is in history."""
    with joined(client, "ann") as (ann, _):
        client.post(f"/api/rooms/{ROOM}/messages", headers=AUTH, json={"text": "hi", "name": "Ops"})
        assert receive_type(ann, "message")["from"] == {"id": "system", "name": "Ops"}
    history = client.get(f"/api/rooms/{ROOM}/history", headers=AUTH).json()["messages"]
    assert history[-1]["from"]["name"] == "Ops"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"text": 5}',
        b'{"name": "ops"}',
        b'{"text": "   "}',
        b'{"text": "' + b"x" * 4001 + b'"}',
        b'{"text": "ok", "name": 7}',
        b'{"text": "ok", "name": "a\\nb"}',
        b'{"text": "ok", "name": "' + b"n" * 33 + b'"}',
        b'{"text": "\\ud800"}',
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
)
def test_a_malformed_body_gets_422(client: TestClient, body: bytes) -> None:
    """Not a JSON object, no string text, empty or too long text, a bad name: 422 with a JSON error."""
    with joined(client, "ann"):
        response = client.post(f"/api/rooms/{ROOM}/messages", headers=AUTH, content=body)
    assert_error(response, 422, "bad_request")


def test_a_body_over_max_frame_gets_413(client: TestClient) -> None:
    """The body is read up to max_frame bytes only."""
    with joined(client, "ann"):
        response = client.post(f"/api/rooms/{ROOM}/messages", headers=AUTH, content=b"x" * 70000)
    assert_error(response, 413, "too_large")


# --- removing ----------------------------------------------------------------------------------------------


def test_removing_a_member_closes_it_with_1008(client: TestClient) -> None:
    """DELETE members/{id}: that member is closed with 1008 "removed" and the others see it leave."""
    with joined(client, "ann") as (ann, _), joined(client, "bob") as (bob, bob_welcome):
        receive_type(ann, "join")
        bob_id = bob_welcome["you"]["id"]
        response = client.delete(f"/api/rooms/{ROOM}/members/{bob_id}", headers=AUTH)
        assert response.status_code == 200
        assert response.json() == {"removed": bob_id, "room": ROOM}
        with pytest.raises(WebSocketDisconnect) as closed:
            drain(bob)
        assert (closed.value.code, closed.value.reason) == (1008, "removed")
        assert receive_type(ann, "leave")["member"]["id"] == bob_id


def test_removing_an_unknown_member_gets_404(client: TestClient) -> None:
    """A member id not present in the room is 404 not_found."""
    with joined(client, "ann"):
        assert_error(client.delete(f"/api/rooms/{ROOM}/members/nobody", headers=AUTH), 404, "not_found")


def test_the_backend_down_gets_503() -> None:
    """When the backend cannot serve (a Redis nobody listens for), the API says 503 unavailable."""
    dead = Settings(api_key=KEY, backend="redis://127.0.0.1:1/0")
    with TestClient(create_app(dead)) as offline:
        assert_error(offline.get("/api/rooms", headers=AUTH), 503, "unavailable")
