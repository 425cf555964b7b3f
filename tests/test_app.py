"""Protocol v1 end to end through Starlette's TestClient: every frame type and every bad input."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse, WebSocketTestSession
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat.app import ChatApp, create_app
from chat.backends.memory import MemoryBackend
from chat.chat import Chat, chat_of
from chat.endpoint import SocketEndpoint
from chat.settings import Settings
from tests import standins
from tests.standins import barrier, link_up, receive, receive_type, serve, until

ROOM = "lobby"


@contextmanager
def joined(
    client: TestClient, query: str = "", room: str = ROOM
) -> Iterator[tuple[WebSocketTestSession, dict[str, Any]]]:
    """A connected socket and its welcome frame."""
    with standins.joined(client, f"/ws/{room}{'?' + query if query else ''}") as joined_socket:
        yield joined_socket


def before_pong(session: WebSocketTestSession, ref: str = "barrier") -> list[dict[str, Any]]:
    """Ping, and return every frame that arrived before the pong."""
    session.send_json({"type": "ping", "ref": ref})
    frames = until(session, "pong")
    assert frames[-1] == {"type": "pong", "ref": ref}
    return frames[:-1]


def send_messages(session: WebSocketTestSession, count: int, prefix: str = "m") -> list[dict[str, Any]]:
    """Send ``count`` messages with refs and return their acks."""
    acks = []
    for index in range(1, count + 1):
        session.send_json({"type": "message", "text": f"{prefix}{index}", "ref": f"{prefix}{index}"})
        acks.append(until(session, "ack")[-1])
    return acks


def stored(client: TestClient, room: str = ROOM) -> list[str]:
    """The texts the backend holds for a room."""
    assert client.portal is not None
    backend = chat_of({"app": client.app}).backend
    return [message.text for message in client.portal.call(backend.history, room, None, 100)]


# --- the handshake and the welcome ---------------------------------------------------------------


def test_welcome_is_the_first_frame(client: TestClient) -> None:
    """The first frame is a welcome with room, you, members (including you), seq, epoch, recovered, history."""
    with joined(client, "name=alice") as (_, welcome):
        assert set(welcome) == {"type", "room", "you", "members", "seq", "epoch", "recovered", "history"}
        assert welcome["room"] == ROOM
        assert welcome["you"]["name"] == "alice"
        assert welcome["members"] == [welcome["you"]]
        assert (welcome["seq"], welcome["recovered"], welcome["history"]) == (0, False, [])
        assert isinstance(welcome["epoch"], str)
        assert welcome["epoch"]


def test_missing_name_gets_a_guest_name(client: TestClient) -> None:
    """Without ?name the member is called guest-XXXX (4 hex digits)."""
    with joined(client) as (_, welcome):
        name = welcome["you"]["name"]
        assert name.startswith("guest-")
        assert len(name) == 10
        int(name[6:], 16)


def test_name_is_trimmed(client: TestClient) -> None:
    """Whitespace around the name is dropped."""
    with joined(client, "name=%20%20bob%09") as (_, welcome):
        assert welcome["you"]["name"] == "bob"


def test_member_ids_differ_per_connection(client: TestClient) -> None:
    """Two connections with the same name are two members."""
    with joined(client, "name=same") as (_, first), joined(client, "name=same") as (_, second):
        assert first["you"]["id"] != second["you"]["id"]


@pytest.mark.parametrize(
    ("path", "about"),
    [
        ("/ws/-dash-first", "room"),
        ("/ws/" + "r" * 65, "room"),
        ("/ws/with%20space", "room"),
        ("/ws/caf%C3%A9", "room"),
        (f"/ws/{ROOM}?name=", "name"),
        (f"/ws/{ROOM}?name=%20%20", "name"),
        (f"/ws/{ROOM}?name=" + "n" * 33, "name"),
        (f"/ws/{ROOM}?name=a%00b", "name"),
        (f"/ws/{ROOM}?name=a%0Ab", "name"),
        (f"/ws/{ROOM}?since=-1", "since"),
        (f"/ws/{ROOM}?since=abc", "since"),
        (f"/ws/{ROOM}?since=1.5", "since"),
        (f"/ws/{ROOM}?since=", "since"),
        (f"/ws/{ROOM}?since=1&epoch=not%20a%20token", "epoch"),
        (f"/ws/{ROOM}?epoch=" + "e" * 65, "epoch"),
    ],
)
def test_invalid_join_is_refused_with_403_json(client: TestClient, path: str, about: str) -> None:
    """An invalid room, name, since or epoch is refused before accept: HTTP 403 with a JSON error body."""
    with pytest.raises(WebSocketDenialResponse) as caught, client.websocket_connect(path):
        pass  # pragma: no cover
    response = caught.value
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["type"], body["code"]) == ("error", "forbidden")
    assert about in body["detail"]


def test_refused_join_is_not_counted(client: TestClient) -> None:
    """A refused connection holds no place and no room."""
    with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/ws/-bad"):
        pass  # pragma: no cover
    body = client.get("/healthz").json()
    assert (body["connections"], body["rooms"]) == (0, 0)


# --- messages --------------------------------------------------------------------------------------


def test_message_reaches_every_member_including_the_sender(client: TestClient) -> None:
    """A message frame reaches everyone, sender included, as the same frame."""
    with joined(client, "name=alice") as (alice, welcome), joined(client) as (bob, _):
        alice.send_json({"type": "message", "text": "hello"})
        to_alice = until(alice, "message")[-1]
        to_bob = until(bob, "message")[-1]
    assert to_alice == to_bob
    assert set(to_alice) == {"type", "room", "seq", "from", "text", "ts"}
    assert (to_alice["room"], to_alice["seq"], to_alice["text"]) == (ROOM, 1, "hello")
    assert to_alice["from"] == welcome["you"]
    assert isinstance(to_alice["ts"], int)


def test_seq_rises_by_exactly_one(client: TestClient) -> None:
    """Messages from any member get consecutive seqs."""
    with joined(client) as (alice, _), joined(client) as (bob, _):
        alice.send_json({"type": "message", "text": "1"})
        until(alice, "message")
        bob.send_json({"type": "message", "text": "2"})
        until(alice, "message")
        alice.send_json({"type": "message", "text": "3"})
        until(alice, "message")
        seqs = [frame["seq"] for frame in until(bob, "message") + until(bob, "message") + until(bob, "message")]
    assert seqs == [1, 2, 3]


@pytest.mark.parametrize("ref", ["r-1", 42, 0, -7])
def test_ack_echoes_the_ref_with_the_seq(client: TestClient, ref: str | int) -> None:
    """A message with a ref is acknowledged to its sender with that ref and the message's seq."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "message", "text": "x", "ref": ref})
        frames = until(alice, "ack")
        message = frames[0] if frames[0]["type"] == "message" else until(alice, "message")[-1]
    assert frames[-1] == {"type": "ack", "ref": ref, "seq": message["seq"], "room": "lobby"}


def test_no_ack_without_ref(client: TestClient) -> None:
    """A message without a ref gets no ack."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "message", "text": "x"})
        assert until(alice, "message")[-1]["text"] == "x"
        assert before_pong(alice) == []


def test_ack_goes_only_to_the_sender(client: TestClient) -> None:
    """Other members get the message but not the ack."""
    with joined(client) as (alice, _), joined(client) as (bob, _):
        alice.send_json({"type": "message", "text": "x", "ref": 1})
        until(alice, "ack")
        assert [frame["type"] for frame in until(bob, "message")] == ["message"]
        assert before_pong(bob) == []


def test_plain_text_frame_is_a_message(client: TestClient) -> None:
    """A text frame not starting with '{' is a message whose text is the whole frame."""
    with joined(client) as (alice, _):
        alice.send_text("hello {not json}")
        assert until(alice, "message")[-1]["text"] == "hello {not json}"


def test_json_array_frame_is_a_plain_message(client: TestClient) -> None:
    """JSON that is not an object (it does not start with '{') is chat text."""
    with joined(client) as (alice, _):
        alice.send_text('["type", "ping"]')
        assert until(alice, "message")[-1]["text"] == '["type", "ping"]'


def test_text_is_delivered_verbatim(client: TestClient) -> None:
    """Unicode, quotes, newlines and surrounding spaces survive the round trip."""
    text = '  Zoë said "hi" 🙂\n</script>\\ '
    with joined(client) as (alice, _):
        alice.send_json({"type": "message", "text": text})
        assert until(alice, "message")[-1]["text"] == text


# --- presence and typing ---------------------------------------------------------------------------


def test_join_is_announced_to_the_others_only(client: TestClient) -> None:
    """A newcomer's join reaches the members already there, not the newcomer."""
    with joined(client) as (alice, _), joined(client, "name=bob") as (bob, bob_welcome):
        assert until(alice, "join")[-1] == {"type": "join", "room": ROOM, "member": bob_welcome["you"]}
        assert before_pong(bob) == []


def test_welcome_lists_the_members_already_there(client: TestClient) -> None:
    """A newcomer's welcome lists every member present, itself included."""
    with joined(client, "name=a") as (_, first), joined(client, "name=b") as (_, second), joined(client) as (_, third):
        ids = {member["id"] for member in third["members"]}
    assert ids == {first["you"]["id"], second["you"]["id"], third["you"]["id"]}


def test_leave_is_announced_when_a_member_disconnects(client: TestClient) -> None:
    """When a member closes its socket the others get a leave frame naming it."""
    with joined(client) as (alice, _), joined(client, "name=bob") as (bob, bob_welcome):
        until(alice, "join")
        bob.close(1000)
        assert until(alice, "leave")[-1] == {"type": "leave", "room": ROOM, "member": bob_welcome["you"]}


def test_typing_reaches_the_others_only(client: TestClient) -> None:
    """typing goes to every other member, not back to its sender."""
    with joined(client, "name=alice") as (alice, welcome), joined(client) as (bob, _):
        until(alice, "join")
        alice.send_json({"type": "typing"})
        assert until(bob, "typing")[-1] == {"type": "typing", "room": ROOM, "from": welcome["you"]}
        assert before_pong(alice) == []


def test_rooms_are_separate(client: TestClient) -> None:
    """Messages, joins and typing of one room do not reach another."""
    with joined(client, room="one") as (alice, _), joined(client, room="two") as (bob, _):
        bob.send_json({"type": "typing"})
        bob.send_json({"type": "message", "text": "in two"})
        until(bob, "message")
        alice.send_json({"type": "message", "text": "in one"})
        assert [frame["text"] for frame in until(alice, "message")] == ["in one"]
        assert before_pong(alice) == []


# --- history ---------------------------------------------------------------------------------------


def test_welcome_history_is_the_latest_history_on_join(settings: Settings) -> None:
    """A newcomer's welcome carries the latest history_on_join messages, oldest first."""
    with serve(settings.replace(history_on_join=3)) as client, joined(client) as (alice, _):
        send_messages(alice, 5)
        with joined(client) as (_, welcome):
            assert [frame["seq"] for frame in welcome["history"]] == [3, 4, 5]
            assert [frame["text"] for frame in welcome["history"]] == ["m3", "m4", "m5"]
            assert (welcome["seq"], welcome["recovered"]) == (5, False)
            assert welcome["history"][0]["type"] == "message"


def test_history_request_defaults_to_latest_fifty(client: TestClient) -> None:
    """A bare history request returns up to 50 latest messages, oldest first, ref null."""
    with joined(client) as (alice, _):
        send_messages(alice, 3)
        alice.send_json({"type": "history"})
        answer = until(alice, "history")[-1]
    assert set(answer) == {"type", "room", "ref", "messages"}
    assert (answer["room"], answer["ref"]) == (ROOM, None)
    assert [frame["seq"] for frame in answer["messages"]] == [1, 2, 3]


def test_history_request_with_before_and_limit(client: TestClient) -> None:
    """before and limit select the latest ``limit`` messages below ``before``, ref echoed."""
    with joined(client) as (alice, _):
        send_messages(alice, 8)
        alice.send_json({"type": "history", "before": 6, "limit": 2, "ref": "h1"})
        answer = until(alice, "history")[-1]
    assert answer["ref"] == "h1"
    assert [frame["seq"] for frame in answer["messages"]] == [4, 5]
    assert [frame["text"] for frame in answer["messages"]] == ["m4", "m5"]


def test_history_request_limit_caps_at_one_hundred(client: TestClient) -> None:
    """limit 100 is accepted; 101 is a bad request echoing the ref."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "history", "limit": 100, "ref": 1})
        assert until(alice, "history")[-1]["messages"] == []
        alice.send_json({"type": "history", "limit": 101, "ref": 2})
        error = until(alice, "error")[-1]
    assert (error["code"], error["ref"]) == ("bad_request", 2)


def test_history_of_an_empty_room_is_empty(client: TestClient) -> None:
    """Asking for history before any message returns an empty list."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "history", "ref": "e"})
        assert until(alice, "history")[-1] == {"type": "history", "room": ROOM, "ref": "e", "messages": []}


def test_history_request_goes_only_to_the_asker(client: TestClient) -> None:
    """The history answer is private."""
    with joined(client) as (alice, _), joined(client) as (bob, _):
        alice.send_json({"type": "history"})
        until(alice, "history")
        assert [frame["type"] for frame in before_pong(bob)] == []


# --- ping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["p1", 5])
def test_ping_gets_pong_with_ref(client: TestClient, ref: str | int) -> None:
    """ping is answered with pong echoing the ref."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "ping", "ref": ref})
        assert receive(alice) == {"type": "pong", "ref": ref}


def test_ping_without_ref_gets_null_ref(client: TestClient) -> None:
    """A ping without ref gets pong with ref null."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "ping"})
        assert receive(alice) == {"type": "pong", "ref": None}


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ref"),
    [
        ('{"type": "message", "text": "x"', None),
        ('{"type": "ping"} trailing', None),
        ('{"type": "ping", "ref": NaN}', None),
        ('{"a":' + "[" * 30_000 + "]" * 30_000 + "}", None),
        (json.dumps({"type": "shout", "ref": "u"}), "u"),
        (json.dumps({"text": "no type", "ref": "t"}), "t"),
        (json.dumps({"type": 7, "ref": "n"}), "n"),
        (json.dumps({"type": "message", "ref": "m"}), "m"),
        (json.dumps({"type": "message", "text": 5, "ref": "m"}), "m"),
        (json.dumps({"type": "message", "text": "", "ref": 1}), 1),
        (json.dumps({"type": "message", "text": " \n\t", "ref": 2}), 2),
        (json.dumps({"type": "message", "text": "\ud800", "ref": 3}), 3),
        (" \t ", None),
        (json.dumps({"type": "ping", "ref": True}), None),
        (json.dumps({"type": "ping", "ref": 1.5}), None),
        (json.dumps({"type": "ping", "ref": "r" * 65}), None),
        (json.dumps({"type": "ping", "ref": 2**53}), None),
        (json.dumps({"type": "history", "limit": 0, "ref": "h"}), "h"),
        (json.dumps({"type": "history", "limit": "5", "ref": "h"}), "h"),
        (json.dumps({"type": "history", "before": 0, "ref": "h"}), "h"),
        (json.dumps({"type": "history", "before": True, "ref": "h"}), "h"),
    ],
    ids=[
        "truncated-json",
        "trailing-data",
        "nan",
        "deep-nesting",
        "unknown-type",
        "missing-type",
        "non-string-type",
        "missing-text",
        "non-string-text",
        "empty-text",
        "whitespace-text",
        "lone-surrogate-text",
        "whitespace-frame",
        "bool-ref",
        "float-ref",
        "long-ref",
        "huge-int-ref",
        "limit-zero",
        "limit-string",
        "before-zero",
        "before-bool",
    ],
)
def test_bad_frame_gets_bad_request_and_the_connection_keeps_working(
    client: TestClient, data: str, ref: str | int | None
) -> None:
    """A bad frame is answered with bad_request (ref echoed when readable), then everything still works."""
    with joined(client) as (alice, _):
        alice.send_text(data)
        error = receive_type(alice, "error")
        assert set(error) == {"type", "code", "detail", "ref"}
        assert (error["code"], error["ref"]) == ("bad_request", ref)
        assert isinstance(error["detail"], str)
        assert error["detail"]
        barrier(alice)
        alice.send_json({"type": "message", "text": "still here", "ref": "after"})
        assert until(alice, "ack")[-1]["ref"] == "after"
    assert stored(client) == ["still here"]


def test_bad_frame_is_not_delivered(client: TestClient) -> None:
    """Nothing of a bad frame reaches the other members."""
    with joined(client) as (alice, _), joined(client) as (bob, _):
        alice.send_json({"type": "message", "text": "   ", "ref": 1})
        until(alice, "error")
        alice.send_json({"type": "message", "text": "valid"})
        assert [frame["text"] for frame in until(bob, "message")] == ["valid"]


def test_binary_frame_is_unsupported_and_the_connection_stays(client: TestClient) -> None:
    """A binary frame is answered with 'unsupported' (ref null) and the socket keeps working."""
    with joined(client) as (alice, _):
        alice.send_bytes(b'{"type":"ping","ref":1}')
        error = receive_type(alice, "error")
        assert (error["code"], error["ref"]) == ("unsupported", None)
        barrier(alice)


def test_text_over_max_text_is_too_large_and_not_delivered(client: TestClient) -> None:
    """Text longer than max_text gets too_large (ref echoed) and reaches nobody."""
    with joined(client) as (alice, _), joined(client) as (bob, _):
        alice.send_json({"type": "message", "text": "x" * 4001, "ref": "big"})
        error = until(alice, "error")[-1]
        assert (error["code"], error["ref"]) == ("too_large", "big")
        alice.send_json({"type": "message", "text": "small"})
        assert [frame["text"] for frame in until(bob, "message")] == ["small"]
        assert [frame["text"] for frame in until(alice, "message")] == ["small"]


def test_plain_text_over_max_text_is_too_large(client: TestClient) -> None:
    """A plain frame longer than max_text is too_large with ref null."""
    with joined(client) as (alice, _):
        alice.send_text("y" * 4001)
        error = receive_type(alice, "error")
        assert (error["code"], error["ref"]) == ("too_large", None)


def test_text_of_exactly_max_text_is_delivered(client: TestClient) -> None:
    """max_text characters (multi-byte ones too) is still a valid message."""
    with joined(client) as (alice, _):
        alice.send_json({"type": "message", "text": "é" * 4000, "ref": 1})
        assert until(alice, "ack")[-1]["ref"] == 1


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("x" * 65537, id="text"),
        pytest.param("€" * 21846, id="multibyte-text"),  # 21846 three-byte characters: 65538 bytes
        pytest.param(b"\x00" * 65537, id="binary"),
    ],
)
def test_frame_over_max_frame_closes_with_1009(client: TestClient, frame: str | bytes) -> None:
    """A frame larger than max_frame (65536) bytes closes the socket with 1009: text counted in UTF-8 bytes,
    binary frames too."""
    with joined(client) as (alice, _):
        if isinstance(frame, str):
            alice.send_text(frame)
        else:
            alice.send_bytes(frame)
        with pytest.raises(WebSocketDisconnect) as caught:
            receive(alice)
    assert caught.value.code == 1009


def test_frame_of_exactly_max_frame_is_answered_not_closed(client: TestClient) -> None:
    """A frame of exactly max_frame bytes is handled as a frame (here: too_large), the socket stays."""
    with joined(client) as (alice, _):
        alice.send_text("x" * 65536)
        assert receive_type(alice, "error")["code"] == "too_large"
        barrier(alice)


def test_member_closed_for_a_large_frame_leaves_the_room(client: TestClient) -> None:
    """The others see a leave for a member closed with 1009."""
    with joined(client) as (alice, _), joined(client) as (bob, bob_welcome):
        until(alice, "join")
        bob.send_text("x" * 65537)
        with pytest.raises(WebSocketDisconnect):
            receive(bob)
        assert until(alice, "leave")[-1]["member"] == bob_welcome["you"]


# --- rate limit ------------------------------------------------------------------------------------


def test_frames_beyond_the_burst_are_rate_limited_and_not_delivered(settings: Settings) -> None:
    """Past the burst a frame gets rate_limited (ref echoed), is not published, and the socket stays."""
    with serve(settings.replace(rate_burst=3, rate_per_second=0.001)) as client, joined(client) as (alice, _):
        acks = send_messages(alice, 3)
        alice.send_json({"type": "message", "text": "one too many", "ref": "late"})
        error = until(alice, "error")[-1]
        assert (error["code"], error["ref"]) == ("rate_limited", "late")
        alice.send_json({"type": "ping", "ref": "alive"})
        assert until(alice, "error")[-1] == {**error, "ref": "alive"}
        assert stored(client) == ["m1", "m2", "m3"]
    assert [ack["seq"] for ack in acks] == [1, 2, 3]


def test_rate_limit_is_per_connection(settings: Settings) -> None:
    """One member's spent burst does not limit another member."""
    with (
        serve(settings.replace(rate_burst=2, rate_per_second=0.001)) as client,
        joined(client) as (alice, _),
        joined(client) as (bob, _),
    ):
        send_messages(alice, 2)
        alice.send_json({"type": "ping", "ref": 1})
        assert until(alice, "error")[-1]["code"] == "rate_limited"
        assert len(send_messages(bob, 2, prefix="b")) == 2


def test_rate_zero_turns_the_limit_off(settings: Settings) -> None:
    """rate_per_second 0 lets every frame through, however small the burst."""
    with serve(settings.replace(rate_burst=1, rate_per_second=0)) as client, joined(client) as (alice, _):
        assert [ack["seq"] for ack in send_messages(alice, 10)] == list(range(1, 11))


# --- recovery --------------------------------------------------------------------------------------


def test_reconnect_with_since_and_epoch_recovers_what_was_missed(client: TestClient) -> None:
    """since=N&epoch=E gives every message after N in the welcome, recovered true."""
    with joined(client) as (alice, welcome):
        send_messages(alice, 5)
        with joined(client, f"since=2&epoch={welcome['epoch']}") as (_, again):
            assert [frame["seq"] for frame in again["history"]] == [3, 4, 5]
            assert (again["recovered"], again["seq"], again["epoch"]) == (True, 5, welcome["epoch"])


def test_recovery_returns_more_than_history_on_join(settings: Settings) -> None:
    """A recovering member gets every missed message, even more than history_on_join."""
    with serve(settings.replace(history_on_join=2)) as client, joined(client) as (alice, welcome):
        send_messages(alice, 6)
        with joined(client, f"since=0&epoch={welcome['epoch']}") as (_, again):
            assert [frame["seq"] for frame in again["history"]] == [1, 2, 3, 4, 5, 6]
            assert again["recovered"] is True


def test_reconnect_with_latest_seq_recovers_nothing(client: TestClient) -> None:
    """since equal to the latest seq: empty history, recovered true."""
    with joined(client) as (alice, welcome):
        send_messages(alice, 3)
        with joined(client, f"since=3&epoch={welcome['epoch']}") as (_, again):
            assert (again["history"], again["recovered"]) == ([], True)


def test_unknown_epoch_is_not_recovered(settings: Settings) -> None:
    """An epoch the room does not have: recovered false and the latest history."""
    with serve(settings.replace(history_on_join=2)) as client, joined(client) as (alice, _):
        send_messages(alice, 4)
        with joined(client, "since=1&epoch=someOtherEpoch") as (_, again):
            assert [frame["seq"] for frame in again["history"]] == [3, 4]
            assert again["recovered"] is False


def test_gap_older_than_history_is_not_recovered(settings: Settings) -> None:
    """Missed messages no longer retained: recovered false and the latest history_on_join."""
    with serve(settings.replace(history_size=3, history_on_join=2)) as client, joined(client) as (alice, welcome):
        send_messages(alice, 6)
        with joined(client, f"since=1&epoch={welcome['epoch']}") as (_, again):
            assert [frame["seq"] for frame in again["history"]] == [5, 6]
            assert (again["recovered"], again["seq"]) == (False, 6)


def test_since_beyond_latest_is_not_recovered(client: TestClient) -> None:
    """since above the room's seq: recovered false."""
    with joined(client) as (alice, welcome):
        send_messages(alice, 2)
        with joined(client, f"since=50&epoch={welcome['epoch']}") as (_, again):
            assert [frame["seq"] for frame in again["history"]] == [1, 2]
            assert again["recovered"] is False


def test_since_without_epoch_is_not_recovered(client: TestClient) -> None:
    """since alone cannot be trusted: recovered false and the latest history."""
    with joined(client) as (alice, _):
        send_messages(alice, 2)
        with joined(client, "since=1") as (_, again):
            assert ([frame["seq"] for frame in again["history"]], again["recovered"]) == ([1, 2], False)


# --- the connection cap ----------------------------------------------------------------------------


def test_connection_over_the_cap_is_closed_with_1013(settings: Settings) -> None:
    """With max_connections=1 a second socket is accepted and closed with 1013; the first keeps working."""
    with serve(settings.replace(max_connections=1)) as client, joined(client) as (alice, _):
        with client.websocket_connect(f"/ws/{ROOM}") as second, pytest.raises(WebSocketDisconnect) as caught:
            receive(second)
        assert caught.value.code == 1013
        barrier(alice)
        assert client.get("/healthz").json()["connections"] == 1


# --- health ----------------------------------------------------------------------------------------


def test_healthz_of_an_idle_server(client: TestClient, settings: Settings) -> None:
    """/healthz answers 200 with status ok, the backend's name, the store's (the backend's own) and zero counts."""
    link_up(client)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "backend": settings.backend.split(":", 1)[0],
        "store": settings.backend.split(":", 1)[0],
        "connections": 0,
        "rooms": 0,
    }


def test_healthz_counts_connections_and_rooms(client: TestClient) -> None:
    """/healthz counts open connections and rooms with local members."""
    with joined(client, room="one"), joined(client, room="one"), joined(client, room="two"):
        body = client.get("/healthz").json()
    assert (body["status"], body["connections"], body["rooms"]) == ("ok", 3, 2)


def test_healthz_is_503_degraded_while_the_backend_cannot_serve() -> None:
    """/healthz answers 503 with status degraded when the backend says it is not healthy."""

    class Unhealthy(MemoryBackend):
        async def healthy(self) -> bool:
            return False

    settings = Settings()
    app = create_app(settings)
    app.state.chat = Chat(settings, Unhealthy("memory://", settings))
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "backend": "memory",
        "store": "memory",
        "connections": 0,
        "rooms": 0,
    }


# --- where messages are recorded -------------------------------------------------------------------


def test_an_app_built_in_code_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app() on the default settings records in memory: chatting leaves the working directory empty."""
    monkeypatch.chdir(tmp_path)
    with serve(Settings()) as client, joined(client) as (alice, _):
        assert send_messages(alice, 3)[-1]["seq"] == 3
        assert client.get("/healthz").json()["store"] == "memory"
    assert list(tmp_path.iterdir()) == []


def test_an_app_whose_settings_name_a_sqlite_file_records_there(tmp_path: Path) -> None:
    """Settings(store="sqlite:///...") records in that file, and a new app on it remembers the room."""
    settings = Settings(store=f"sqlite:///{tmp_path}/chat.db")
    with serve(settings) as client, joined(client) as (alice, welcome):
        send_messages(alice, 2)
        assert client.get("/healthz").json()["store"] == "sqlite"
    assert (tmp_path / "chat.db").exists()
    with serve(settings) as client, joined(client, f"since=1&epoch={welcome['epoch']}") as (_, again):
        assert again["recovered"] is True
        assert [message["text"] for message in again["history"]] == ["m2"]
        assert stored(client) == ["m1", "m2"]


# --- the way to the endpoint ------------------------------------------------------------------------


class Probe(SocketEndpoint):
    """A chat endpoint that records its scope and the coroutines awaiting it, then closes."""

    seen: ClassVar[list[tuple[dict[str, Any], list[str]]]] = []

    async def on_connect(self, websocket: WebSocket) -> None:
        frame: FrameType | None = sys._getframe()
        callers = []
        while frame is not None:
            callers.append(frame.f_code.co_qualname)
            frame = frame.f_back
        self.seen.append((dict(websocket.scope), callers))
        await websocket.close()

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        pass


class Passing:
    """A pure ASGI middleware that counts the WebSockets passing through it."""

    sockets = 0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        Passing.sockets += scope["type"] == "websocket"
        await self.app(scope, receive, send)


async def ignore(websocket: WebSocket, error: Exception) -> None:
    """An exception handler that does nothing."""


def probed(app: Starlette, path: str = "/ws/lobby") -> tuple[dict[str, Any], list[str]]:
    """The scope and the awaiting coroutines ``Probe`` saw for one connection to ``path``."""
    Probe.seen = []
    with TestClient(app) as client, pytest.raises(WebSocketDisconnect), client.websocket_connect(path):
        pass
    [seen] = Probe.seen
    return seen


def test_a_chat_socket_reaches_its_endpoint_without_starlettes_middleware() -> None:
    """No coroutine frame of Starlette's middleware and router stays between the server and a chat endpoint."""
    _, callers = probed(ChatApp(routes=[WebSocketRoute("/ws/{room}", Probe)]))
    assert "ChatApp.__call__" in callers
    assert not {"ExceptionMiddleware.__call__", "ServerErrorMiddleware.__call__", "Router.app"} & set(callers)


def test_a_chat_socket_gets_the_scope_the_router_would_give_it() -> None:
    """The endpoint sees the app, router, route, endpoint and path parameters Starlette's router sets."""
    routes = [WebSocketRoute("/ws/{room}", Probe)]
    direct, _ = probed(ChatApp(routes=routes))
    routed, _ = probed(Starlette(routes=routes))
    for key in ("router", "route", "endpoint", "path_params", "path", "query_string", "headers"):
        assert direct[key] == routed[key], key
    assert direct["path_params"] == {"room": "lobby"}


@pytest.mark.parametrize("added", ["middleware", "exception handler"])
def test_an_app_given_middleware_or_handlers_routes_sockets_the_usual_way(added: str) -> None:
    """With a middleware or an exception handler added, a chat socket goes through Starlette's stack (and them)."""
    app = ChatApp(routes=[WebSocketRoute("/ws/{room}", Probe)])
    if added == "middleware":
        app.add_middleware(Passing)
    else:
        app.add_exception_handler(KeyError, ignore)
    Passing.sockets = 0
    _, callers = probed(app)
    assert "ExceptionMiddleware.__call__" in callers
    assert Passing.sockets == (1 if added == "middleware" else 0)


def test_a_socket_to_another_kind_of_route_is_routed_the_usual_way() -> None:
    """A WebSocket route that is not a chat endpoint, or one listed after a route that matches first, goes the
    usual way."""
    seen: list[str] = []

    async def other(websocket: WebSocket) -> None:
        seen.append(websocket.url.path)
        await websocket.close()

    app = ChatApp(routes=[WebSocketRoute("/ws/other", other), WebSocketRoute("/ws/{room}", Probe)])
    with TestClient(app) as client, pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws/other"):
        pass
    assert seen == ["/ws/other"]
    _, callers = probed(app, "/ws/lobby")
    assert "ExceptionMiddleware.__call__" not in callers
