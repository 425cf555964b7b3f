"""Protocol v1.1 (``/ws``, many rooms on one connection) end to end through Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from chat.settings import Settings
from tests.standins import closed_with, joined, receive, receive_type, refused, serve, until
from tests.tokens import SECRET, token

AUTH = Settings(jwt_secret=SECRET)


@contextmanager
def connected(
    client: TestClient, query: str = "name=ann", headers: dict[str, str] | None = None
) -> Iterator[tuple[WebSocketTestSession, dict[str, Any]]]:
    """A /ws socket and its hello frame."""
    with client.websocket_connect(f"/ws?{query}", headers=headers or {}) as session:
        yield session, receive_type(session, "hello")


def join(session: WebSocketTestSession, room: str, **fields: Any) -> dict[str, Any]:
    """Join a room; its welcome."""
    session.send_json({"type": "join", "room": room, **fields})
    return until(session, "welcome")[-1]


def answer(session: WebSocketTestSession, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame; the next frame that answers a request (not a broadcast)."""
    session.send_json(frame)
    while True:
        got = receive(session)
        if got["type"] in ("welcome", "left", "ack", "error", "history", "pong"):
            return got


def message_saying(session: WebSocketTestSession, text: str) -> dict[str, Any]:
    """The next message frame with this text (skipping any other frame)."""
    while True:
        frame = until(session, "message")[-1]
        if frame["text"] == text:
            return frame


# --- the handshake ---------------------------------------------------------------------------------


def test_hello_is_the_first_frame(client: TestClient) -> None:
    """/ws answers with hello, naming the member; nothing is joined yet."""
    with connected(client, "name=ann") as (_, hello):
        assert set(hello) == {"type", "you"}
        assert hello["you"]["name"] == "ann"
        assert client.get("/healthz").json()["rooms"] == 0


@pytest.mark.parametrize(
    ("query", "about"),
    [("name=", "name"), ("name=a%00b", "name"), ("batch=2", "batch"), ("since=1", "join frame"), ("epoch=e", "join")],
)
def test_a_bad_handshake_is_refused_with_403_as_on_v1(client: TestClient, query: str, about: str) -> None:
    """A bad name or batch, or since/epoch in the address, is refused before accept: 403, JSON."""
    response = refused(client, f"/ws?{query}")
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert about in response.json()["detail"]
    assert client.get("/healthz").json()["connections"] == 0


def test_a_connection_without_a_token_is_refused_when_auth_is_on() -> None:
    """With auth on, /ws needs a token as /ws/{room} does."""
    with serve(AUTH) as client:
        response = refused(client, "/ws")
        assert response.status_code == 403
        assert "token is required" in response.json()["detail"]


def test_a_foreign_origin_is_refused() -> None:
    """The Origin policy applies to /ws."""
    with serve(Settings()) as client:
        assert refused(client, "/ws", {"origin": "https://evil.example"}).status_code == 403


def test_one_ws_connection_counts_once_against_the_per_address_limit() -> None:
    """However many rooms it joins, a /ws socket is one connection of its address."""
    with serve(Settings(max_connections_per_ip=1)) as client, connected(client) as (session, _):
        for room in ("r1", "r2", "r3"):
            join(session, room)
        assert refused(client, "/ws").status_code == 429
        assert client.get("/healthz").json()["connections"] == 1


# --- joining and leaving ---------------------------------------------------------------------------


def test_a_join_gets_v1s_welcome_with_the_ref(client: TestClient) -> None:
    """The welcome has v1's fields, the room, and the join's ref."""
    with connected(client) as (session, hello):
        welcome = join(session, "r1", ref="j1")
        assert set(welcome) == {"type", "room", "you", "members", "seq", "epoch", "recovered", "history", "ref"}
        assert (welcome["room"], welcome["you"], welcome["ref"]) == ("r1", hello["you"], "j1")
        assert welcome["members"] == [hello["you"]]


def test_a_welcome_without_a_ref_is_exactly_v1s(client: TestClient) -> None:
    """A join without ref gets no ref field."""
    with connected(client) as (session, _):
        assert "ref" not in join(session, "r1")


def test_one_connection_carries_many_rooms(client: TestClient) -> None:
    """A member in three rooms gets each room's messages, each naming its room, and nothing from others."""
    with connected(client) as (ann, _), connected(client, "name=bob") as (bob, _):
        for room in ("r1", "r2", "r3"):
            join(ann, room)
        join(bob, "r2")
        join(bob, "r4")
        for room in ("r2", "r4"):
            assert answer(bob, {"type": "message", "room": room, "text": f"in {room}", "ref": room})["type"] == "ack"
        message = until(ann, "message")[-1]
        assert (message["room"], message["text"]) == ("r2", "in r2")
        ann.send_json({"type": "ping", "ref": "barrier"})
        assert receive(ann) == {"type": "pong", "ref": "barrier"}  # nothing from r4 came before it
        health = client.get("/healthz").json()
        assert (health["connections"], health["rooms"]) == (2, 4)


def test_messages_are_acked_with_their_room(client: TestClient) -> None:
    """An ack names the room the message went to; seqs count per room."""
    with connected(client) as (session, _):
        join(session, "r1")
        join(session, "r2")
        acks = [
            answer(session, {"type": "message", "room": room, "text": "x", "ref": n})
            for n, room in enumerate(("r1", "r2", "r1"))
        ]
        assert [(ack["room"], ack["seq"], ack["ref"]) for ack in acks] == [("r1", 1, 0), ("r2", 1, 1), ("r1", 2, 2)]


def test_leave_answers_left_and_the_room_hears_a_leave(client: TestClient) -> None:
    """leave gets left with the ref; the others get v1's leave; the room's messages stop."""
    with connected(client) as (ann, hello), connected(client, "name=bob") as (bob, _):
        join(ann, "r1")
        join(ann, "r2")
        join(bob, "r1")
        assert answer(ann, {"type": "leave", "room": "r1", "ref": 9}) == {"type": "left", "room": "r1", "ref": 9}
        assert receive_type(bob, "leave")["member"] == hello["you"]
        bob.send_json({"type": "message", "room": "r1", "text": "gone?"})
        assert answer(ann, {"type": "ping", "ref": "p"}) == {"type": "pong", "ref": "p"}


def test_a_v1_member_and_a_ws_member_share_a_room(client: TestClient) -> None:
    """v1 and v1.1 connections meet in one room: joins, messages and leaves cross both ways."""
    with joined(client, "/ws/r1?name=vic") as (vic, _), connected(client) as (ann, hello):
        join(ann, "r1")
        assert receive_type(vic, "join")["member"] == hello["you"]
        vic.send_json({"type": "message", "text": "from v1"})
        assert message_saying(ann, "from v1")["room"] == "r1"
        ann.send_json({"type": "message", "room": "r1", "text": "from v1.1"})
        assert message_saying(vic, "from v1.1")["room"] == "r1"
        answer(ann, {"type": "leave", "room": "r1"})
        assert until(vic, "leave")[-1]["member"] == hello["you"]


def test_typing_and_history_name_their_room(client: TestClient) -> None:
    """typing reaches the room's others; a history page answers for the room asked."""
    with connected(client) as (ann, _), connected(client, "name=bob") as (bob, _):
        join(ann, "r1")
        join(bob, "r1")
        answer(ann, {"type": "message", "room": "r1", "text": "one", "ref": 1})
        ann.send_json({"type": "typing", "room": "r1"})
        assert until(bob, "typing")[-1]["room"] == "r1"
        page = answer(bob, {"type": "history", "room": "r1", "ref": "h"})
        assert (page["room"], page["ref"], [m["text"] for m in page["messages"]]) == ("r1", "h", ["one"])


def test_rejoining_with_since_and_epoch_recovers_each_room(client: TestClient) -> None:
    """Each join recovers its own room from its own since/epoch."""
    with connected(client, "name=bob") as (bob, _):
        epochs = {room: join(bob, room)["epoch"] for room in ("r1", "r2")}
        with connected(client) as (ann, _):
            first = {room: join(ann, room) for room in ("r1", "r2")}
            assert [welcome["seq"] for welcome in first.values()] == [0, 0]
        for room, count in (("r1", 3), ("r2", 1)):
            for n in range(count):
                answer(bob, {"type": "message", "room": room, "text": f"{room}-{n}", "ref": n})
        with connected(client) as (ann, _):
            again = join(ann, "r1", since=1, epoch=epochs["r1"])
            other = join(ann, "r2", since=0, epoch=epochs["r2"])
    assert [m["text"] for m in again["history"]] == ["r1-1", "r1-2"]
    assert [m["text"] for m in other["history"]] == ["r2-0"]
    assert (again["recovered"], other["recovered"]) == (True, True)


# --- refusals: each answers the request and changes nothing else ------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "room"),
    [
        ({"type": "join", "room": "-bad", "ref": 1}, "forbidden", "-bad"),
        ({"type": "join", "room": "r1", "ref": 1}, "bad_request", "r1"),
        ({"type": "join", "room": "r9", "since": "x", "ref": 1}, "bad_request", "r9"),
        ({"type": "leave", "room": "r9", "ref": 1}, "bad_request", "r9"),
        ({"type": "message", "room": "r9", "text": "hi", "ref": 1}, "bad_request", "r9"),
        ({"type": "history", "room": "r9", "ref": 1}, "bad_request", "r9"),
        ({"type": "message", "text": "hi", "ref": 1}, "bad_request", None),
        ({"type": "hello", "ref": 1}, "bad_request", None),
    ],
)
def test_a_refused_request_names_its_room_and_ref_and_changes_nothing(
    client: TestClient, frame: dict[str, Any], code: str, room: str | None
) -> None:
    """Refusals come as error frames with the ref (and the room when named); the joined room carries on."""
    with connected(client) as (session, _):
        join(session, "r1")
        error = answer(session, frame)
        assert (error["type"], error["code"], error["ref"], error.get("room")) == ("error", code, 1, room)
        assert answer(session, {"type": "message", "room": "r1", "text": "still in", "ref": 2})["type"] == "ack"
        assert client.get("/healthz").json()["rooms"] == 1


def test_a_plain_text_frame_is_a_bad_request_on_ws(client: TestClient) -> None:
    """Without a default room, plain text is refused, not published anywhere."""
    with connected(client) as (session, _):
        join(session, "r1")
        session.send_text("hello everyone")
        assert receive_type(session, "error")["code"] == "bad_request"
        assert answer(session, {"type": "history", "room": "r1", "ref": 1})["messages"] == []


def test_joins_past_the_limit_are_too_many_rooms() -> None:
    """max_rooms_per_connection caps the rooms of one connection: too_many_rooms, room and ref named."""
    with serve(Settings(max_rooms_per_connection=2)) as client, connected(client) as (session, _):
        join(session, "r1")
        join(session, "r2")
        error = answer(session, {"type": "join", "room": "r3", "ref": "j3"})
        assert (error["code"], error["room"], error["ref"]) == ("too_many_rooms", "r3", "j3")
        assert client.get("/healthz").json()["rooms"] == 2


def test_the_tokens_rooms_claim_refuses_a_join_not_the_connection() -> None:
    """A join the token's rooms claim does not allow is forbidden; the allowed rooms work on the same socket."""
    with serve(AUTH) as client, connected(client, f"token={token(rooms=['support-*'])}") as (session, _):
        error = answer(session, {"type": "join", "room": "lobby", "ref": 1})
        assert (error["code"], error["room"]) == ("forbidden", "lobby")
        assert "does not allow room" in error["detail"]
        assert join(session, "support-1")["room"] == "support-1"


# --- what stays per connection -------------------------------------------------------------------


def test_the_rate_limit_is_one_for_the_connection_whatever_the_room() -> None:
    """Frames to every room draw on one token bucket; the refusal names the room the frame named."""
    with serve(Settings(rate_burst=3, rate_per_second=0.001)) as client, connected(client) as (session, _):
        join(session, "r1")
        join(session, "r2")
        assert answer(session, {"type": "message", "room": "r1", "text": "x", "ref": 1})["type"] == "ack"
        error = answer(session, {"type": "message", "room": "r2", "text": "x", "ref": "late"})
        assert (error["code"], error["room"], error["ref"]) == ("rate_limited", "r2", "late")


def test_bad_frames_in_a_row_close_the_whole_socket_with_1008() -> None:
    """The abuse counter is per connection: enough bad frames close the socket, every room with it."""
    with serve(Settings(max_bad_frames=3)) as client, connected(client) as (session, _):
        join(session, "r1")
        for _ in range(3):
            session.send_text("not json")
        close = closed_with(session)
        assert (close.code, close.reason) == (1008, "3 bad frames in a row")
    assert client.get("/healthz").json()["rooms"] == 0


def test_frames_for_rooms_not_joined_count_as_bad_frames() -> None:
    """Frames about rooms the member is not in are bad frames like any other: enough in a row close with 1008."""
    with serve(Settings(max_bad_frames=3)) as client, connected(client) as (session, _):
        join(session, "r1")
        session.send_json({"type": "join", "room": "r1"})
        session.send_json({"type": "message", "room": "r9", "text": "hi"})
        session.send_json({"type": "leave", "room": "r9"})
        close = closed_with(session)
        assert (close.code, close.reason) == (1008, "3 bad frames in a row")


def test_an_expiring_token_closes_the_socket_with_1008() -> None:
    """One token expiry per connection: 1008 closes the socket, whatever rooms it is in."""
    with serve(AUTH) as client, connected(client, f"token={token(ttl=1.5)}") as (session, _):
        join(session, "r1")
        close = closed_with(session)
        assert (close.code, close.reason) == (1008, "token expired")


def test_disconnect_leaves_every_room(client: TestClient) -> None:
    """When the /ws socket closes, its member leaves every room it was in."""
    with connected(client, "name=bob") as (bob, _):
        join(bob, "r1")
        join(bob, "r2")
        with connected(client) as (ann, hello):
            join(ann, "r1")
            join(ann, "r2")
            for _ in range(2):  # told once per presence window: a join and leave within one cancel
                until(bob, "join")
        leaves = [until(bob, "leave")[-1] for _ in range(2)]
        assert {(leave["room"], leave["member"]["id"]) for leave in leaves} == {
            ("r1", hello["you"]["id"]),
            ("r2", hello["you"]["id"]),
        }


# --- presence=0 ------------------------------------------------------------------------------------


def test_a_member_without_presence_gets_members_but_no_joins_or_leaves(client: TestClient) -> None:
    """presence=0 (v1's query) and presence:false (a /ws join): the welcome lists the members, then no join
    or leave frames; typing and messages still come."""
    with (
        connected(client, "name=quiet") as (quiet, quiet_hello),
        joined(client, "/ws/r1?name=calm&presence=0") as (calm, calm_welcome),
        connected(client, "name=bob") as (bob, bob_hello),
    ):
        members = join(quiet, "r1", presence=False)["members"]
        assert {member["id"] for member in members} == {quiet_hello["you"]["id"], calm_welcome["you"]["id"]}
        welcome = join(bob, "r1")
        assert len(welcome["members"]) == 3
        bob.send_json({"type": "typing", "room": "r1"})
        answer(bob, {"type": "leave", "room": "r1"})
        join(bob, "r1")
        answer(bob, {"type": "message", "room": "r1", "text": "hello", "ref": 1})
        for session in (quiet, calm):
            frames = until(session, "message")
            assert [frame["type"] for frame in frames] == ["typing", "message"]
            assert frames[0]["from"] == bob_hello["you"]
