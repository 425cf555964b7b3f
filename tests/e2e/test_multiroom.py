"""Protocol v1.1 over real servers: one ``/ws`` socket in many rooms, beside v1 members, refusals, recovery,
the operator's removal, a slow consumer, and two processes on one Redis."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.redis_server import RedisServer
from tests.tokens import SECRET, token

from .clients import (
    WAIT,
    Frame,
    RawClient,
    expect,
    joined,
    kernel_send_buffer_max,
    messages,
    parse,
    recv_frame,
    say,
    wait_closed,
    wait_for,
    wait_health,
    wait_leave,
)
from .server_process import ServerProcess, StartServer, servers_on

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

KEY = "e2e-multiroom-key"


# --- a /ws client --------------------------------------------------------------------------------


def multi_url(server: ServerProcess, **query: str | int) -> str:
    """The address of ``/ws`` (v1.1) with the given query parameters."""
    suffix = "?" + urlencode({key: str(value) for key, value in query.items()}) if query else ""
    return f"ws://{server.base}/ws{suffix}"


@asynccontextmanager
async def connected(
    server: ServerProcess, name: str | None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A ``/ws`` connection (named ``name`` unless None) whose ``hello`` was read (``max_queue=None`` as in
    ``clients.joined``)."""
    with anyio.fail_after(WAIT):
        ws = await connect(
            multi_url(server) if name is None else multi_url(server, name=name),
            additional_headers=headers,
            open_timeout=WAIT,
            close_timeout=WAIT,
            max_queue=None,
        )
    async with ws:
        yield ws, await expect(ws, "hello")


async def send(ws: ClientConnection, **fields: Any) -> None:
    """Send one JSON frame made of ``fields``."""
    await ws.send(json.dumps(fields))


async def answer(ws: ClientConnection, ref: str | int, **fields: Any) -> Frame:
    """Send a frame carrying ``ref``; the frame that answers it (frames of other business read meanwhile are
    dropped)."""
    await send(ws, ref=ref, **fields)
    frame, _ = await wait_for(ws, lambda frame: frame.get("ref") == ref)
    return frame


async def join(ws: ClientConnection, room: str, **fields: Any) -> Frame:
    """Join ``room``; its welcome, which must echo the join's ref."""
    ref = f"join-{room}"
    welcome = await answer(ws, ref, type="join", room=room, **fields)
    assert (welcome["type"], welcome["room"]) == ("welcome", room), welcome
    return welcome


async def leave(ws: ClientConnection, room: str) -> None:
    """Leave ``room`` and read its ``left``."""
    ref = f"leave-{room}"
    assert await answer(ws, ref, type="leave", room=room) == {"type": "left", "room": room, "ref": ref}


async def refusal(ws: ClientConnection, ref: str | int, **fields: Any) -> Frame:
    """Send a frame the server must refuse; its ``error`` frame."""
    error = await answer(ws, ref, **fields)
    assert error["type"] == "error", error
    return error


async def say_in(ws: ClientConnection, room: str, *texts: str) -> list[int]:
    """Send messages to ``room``; wait for each ack (which must name the room) and each echo; their seqs."""
    refs = {f"{room}-say-{index}": index for index in range(len(texts))}
    for ref, index in refs.items():
        await send(ws, type="message", room=room, text=texts[index], ref=ref)
    seqs: dict[int, int] = {}
    echoed: set[int] = set()
    with anyio.fail_after(WAIT):
        while len(seqs) < len(refs) or not echoed.issuperset(seqs.values()):
            frame = parse(await ws.recv())
            assert frame["type"] != "error", frame
            if frame["type"] == "ack" and frame["ref"] in refs:
                assert frame["room"] == room, frame
                seqs[refs[frame["ref"]]] = frame["seq"]
            elif frame["type"] == "message" and frame["room"] == room:
                echoed.add(frame["seq"])
    return [seqs[index] for index in range(len(texts))]


async def assert_usable(ws: ClientConnection, room: str) -> None:
    """The connection still answers a ping and still publishes in ``room`` (a room it is in)."""
    assert await answer(ws, "still-there", type="ping") == {"type": "pong", "ref": "still-there"}
    assert len(await say_in(ws, room, "still here")) == 1


async def refused_handshake(url: str) -> tuple[int, Frame]:
    """The HTTP status and JSON body a handshake is refused with (the test fails if it is accepted)."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, open_timeout=WAIT)
    body = json.loads(refused.value.response.body)
    assert isinstance(body, dict), body
    return refused.value.response.status_code, body


def texts_by_room(frames: list[Frame]) -> dict[str, list[str]]:
    """room -> the texts of the ``message`` frames among ``frames``, in the order they came."""
    found: dict[str, list[str]] = {}
    for frame in frames:
        if frame["type"] == "message":
            found.setdefault(frame["room"], []).append(frame["text"])
    return found


# --- one connection, many rooms -------------------------------------------------------------------


async def test_hello_is_the_first_frame(server: ServerProcess) -> None:
    """The first frame on /ws is ``hello`` naming the member, before any room."""
    async with connected(server, "ann") as (_, hello):
        pass
    assert set(hello) == {"type", "you"}
    assert hello["you"]["name"] == "ann"
    assert isinstance(hello["you"]["id"], str)
    assert hello["you"]["id"]


async def test_three_joins_on_one_connection_get_three_welcomes_echoing_their_refs(server: ServerProcess) -> None:
    """Joins of three rooms get three welcomes, each v1's welcome plus the join's ref (none when it had none)."""
    async with connected(server, "ann") as (ws, hello):
        await send(ws, type="join", room="alpha", ref="j-alpha")
        await send(ws, type="join", room="beta", ref=2)
        await send(ws, type="join", room="gamma")
        welcomes = [await expect(ws, "welcome") for _ in range(3)]
    assert [(welcome["room"], welcome.get("ref")) for welcome in welcomes] == [
        ("alpha", "j-alpha"),
        ("beta", 2),
        ("gamma", None),
    ]
    assert "ref" not in welcomes[2]
    for welcome in welcomes:
        assert set(welcome) - {"ref"} == {"type", "room", "you", "members", "seq", "epoch", "recovered", "history"}
        assert welcome["you"] == hello["you"]
        assert welcome["members"] == [hello["you"]]
        assert (welcome["seq"], welcome["recovered"], welcome["history"]) == (0, False, [])


async def test_each_member_gets_the_messages_of_its_rooms_only(server: ServerProcess) -> None:
    """ann in three rooms, bob in two of them, carol in the third: each gets exactly its rooms' messages."""
    async with (
        connected(server, "ann") as (ann, _),
        connected(server, "bob") as (bob, _),
        connected(server, "carol") as (carol, _),
    ):
        for room in ("alpha", "beta", "gamma"):
            await join(ann, room)
        for room in ("alpha", "beta"):
            await join(bob, room)
        await join(carol, "gamma")
        await send(bob, type="message", room="beta", text="bob in beta")  # no ref: no ack to read
        await send(carol, type="message", room="gamma", text="carol in gamma")
        with anyio.fail_after(WAIT):
            waiting = {"bob in beta", "carol in gamma"}
            while waiting:  # ann is in both rooms: once she has both, they come first in their rooms
                waiting.discard(parse(await ann.recv()).get("text", ""))
        await say_in(ann, "alpha", "ann in alpha")
        await say_in(ann, "beta", "ann in beta")
        await say_in(ann, "gamma", "ann in gamma")
        # The last message of each room tells its members that everything before it was delivered.
        for room in ("alpha", "beta", "gamma"):
            await say_in(ann, room, f"end of {room}")

        async def frames_until_the_ends(ws: ClientConnection, rooms: set[str]) -> list[Frame]:
            ends = {f"end of {room}" for room in rooms}
            seen: list[Frame] = []
            with anyio.fail_after(WAIT):
                while not ends <= {frame.get("text") for frame in seen}:
                    seen.append(parse(await ws.recv()))
            return seen

        bob_got = texts_by_room(await frames_until_the_ends(bob, {"alpha", "beta"}))
        carol_got = texts_by_room(await frames_until_the_ends(carol, {"gamma"}))
    assert bob_got == {
        "alpha": ["ann in alpha", "end of alpha"],
        "beta": ["bob in beta", "ann in beta", "end of beta"],
    }
    assert carol_got == {"gamma": ["carol in gamma", "ann in gamma", "end of gamma"]}


async def test_acks_name_the_room_and_each_room_counts_its_own_seqs(server: ServerProcess) -> None:
    """A message's ack carries its room and its seq in that room; each room's seqs start at 1."""
    async with connected(server, "ann") as (ws, _):
        await join(ws, "alpha")
        await join(ws, "beta")
        acks = [
            await answer(ws, "a1", type="message", room="alpha", text="one"),
            await answer(ws, "b1", type="message", room="beta", text="one"),
            await answer(ws, "a2", type="message", room="alpha", text="two"),
        ]
    assert acks == [
        {"type": "ack", "ref": "a1", "seq": 1, "room": "alpha"},
        {"type": "ack", "ref": "b1", "seq": 1, "room": "beta"},
        {"type": "ack", "ref": "a2", "seq": 2, "room": "alpha"},
    ]


async def test_typing_reaches_the_other_members_of_that_room_only(server: ServerProcess) -> None:
    """``typing`` naming a room reaches that room's other members, with the room; not the typist, not other rooms."""
    async with (
        connected(server, "ann") as (ann, hello),
        connected(server, "bob") as (bob, _),
        connected(server, "carol") as (carol, _),
    ):
        await join(ann, "alpha")
        await join(ann, "beta")
        await join(bob, "beta")
        await join(carol, "alpha")
        await send(ann, type="typing", room="beta")
        assert await expect(bob, "typing") == {"type": "typing", "room": "beta", "from": hello["you"]}
        # The marker follows the typing the same way: a typing for ann or carol would come before it.
        await send(ann, type="message", room="alpha", text="marker")
        _, before = await wait_for(ann, lambda frame: frame["type"] == "message")
        assert all(frame["type"] != "typing" for frame in before), before
        assert (await expect(carol, "message"))["text"] == "marker"


async def test_history_answers_with_that_rooms_messages(server: ServerProcess) -> None:
    """``history`` naming a room pages that room's messages alone, the frame naming the room."""
    async with connected(server, "ann") as (ann, _):
        await join(ann, "alpha")
        await join(ann, "beta")
        await say_in(ann, "alpha", "a1", "a2")
        await say_in(ann, "beta", "b1")
        page = await answer(ann, "page", type="history", room="alpha", before=2)
        assert (page["type"], page["room"]) == ("history", "alpha")
        assert [(item["room"], item["seq"], item["text"]) for item in page["messages"]] == [("alpha", 1, "a1")]
        page = await answer(ann, "page-b", type="history", room="beta")
        assert [(item["room"], item["seq"], item["text"]) for item in page["messages"]] == [("beta", 1, "b1")]


# --- v1 and v1.1 in one room ----------------------------------------------------------------------


async def test_v1_and_v11_members_of_a_room_get_each_others_messages(server: ServerProcess) -> None:
    """A /ws/{room} member and a /ws member of one room get each other's messages; both acks carry the room."""
    async with joined(server, "mixed", "vic") as (vic, _), connected(server, "ann") as (ann, _):
        await join(ann, "mixed")
        await expect(vic, "join")
        assert await say_in(ann, "mixed", "from v1.1") == [1]
        (from_ann,) = await messages(vic, 1)
        assert (from_ann["room"], from_ann["seq"], from_ann["text"]) == ("mixed", 1, "from v1.1")
        await send(vic, type="message", text="from v1", ref="v")
        ack, _ = await wait_for(vic, lambda frame: frame["type"] == "ack")
        assert ack == {"type": "ack", "ref": "v", "seq": 2, "room": "mixed"}
        (from_vic,) = await messages(ann, 1)
        assert (from_vic["room"], from_vic["seq"], from_vic["text"]) == ("mixed", 2, "from v1")
        assert from_vic["from"]["name"] == "vic"


async def test_v1_and_v11_members_of_a_room_see_each_others_joins_and_leaves(server: ServerProcess) -> None:
    """A /ws member sees a v1 member join and leave; a v1 member sees the /ws member join and leave."""
    async with connected(server, "ann") as (ann, hello):
        await join(ann, "mixed")
        async with joined(server, "mixed", "vic") as (vic, vic_welcome):
            assert hello["you"] in vic_welcome["members"]
            assert await expect(ann, "join") == {"type": "join", "room": "mixed", "member": vic_welcome["you"]}
            await leave(ann, "mixed")
            assert await expect(vic, "leave") == {"type": "leave", "room": "mixed", "member": hello["you"]}
            await join(ann, "mixed")
            assert await expect(vic, "join") == {"type": "join", "room": "mixed", "member": hello["you"]}
        assert await expect(ann, "leave") == {"type": "leave", "room": "mixed", "member": vic_welcome["you"]}


# --- leaving -----------------------------------------------------------------------------------------


async def test_leave_is_answered_with_left_and_the_others_get_leave(server: ServerProcess) -> None:
    """``leave`` gets ``left`` with its ref (null without one); the room's other members get ``leave``."""
    async with connected(server, "ann") as (ann, hello), connected(server, "bob") as (bob, bob_hello):
        await join(ann, "alpha")
        await join(ann, "beta")
        await join(bob, "alpha")
        assert await expect(ann, "join") == {"type": "join", "room": "alpha", "member": bob_hello["you"]}
        await send(ann, type="leave", room="alpha", ref=7)
        await send(ann, type="leave", room="beta")
        assert await expect(ann, "left") == {"type": "left", "room": "alpha", "ref": 7}
        assert await expect(ann, "left") == {"type": "left", "room": "beta", "ref": None}
        assert await expect(bob, "leave") == {"type": "leave", "room": "alpha", "member": hello["you"]}


async def test_a_room_left_delivers_nothing_more(server: ServerProcess) -> None:
    """After ``left``, a message in that room does not reach the member; its other rooms still do."""
    async with connected(server, "ann") as (ann, _), connected(server, "bob") as (bob, _):
        for room in ("alpha", "beta"):
            await join(ann, room)
            await join(bob, room)
        await leave(ann, "alpha")
        assert await say_in(bob, "alpha", "ann has gone") == [1]
        # bob read its own echo: that message's fan-out was over before the next one was published.
        assert await say_in(bob, "beta", "marker") == [1]
        marker, before = await wait_for(ann, lambda frame: frame["type"] == "message")
        assert (marker["room"], marker["text"]) == ("beta", "marker"), marker
        assert all(frame["type"] != "message" for frame in before), before


# --- refusals over the wire ----------------------------------------------------------------------------------


async def test_a_join_to_an_invalid_room_is_forbidden_and_the_connection_stays(server: ServerProcess) -> None:
    """A join of an invalid room name gets ``forbidden`` with its room and ref; the connection stays usable."""
    async with connected(server, "ann") as (ann, _):
        await join(ann, "alpha")
        error = await refusal(ann, "bad", type="join", room="no room!")
        assert (error["code"], error["room"], error["ref"]) == ("forbidden", "no room!", "bad")
        await assert_usable(ann, "alpha")


async def test_a_join_the_token_does_not_allow_is_forbidden(start_server: StartServer) -> None:
    """A token whose ``rooms`` claim names alpha: joining beta is ``forbidden``, alpha is welcome."""
    server = start_server(env={"CHAT_JWT_SECRET": SECRET})
    headers = {"Authorization": f"Bearer {token(sub='u-ann', name='ann', rooms=['alpha'])}"}
    async with connected(server, None, headers) as (ws, hello):
        assert hello == {"type": "hello", "you": {"id": "u-ann", "name": "ann"}}
        error = await refusal(ws, "nope", type="join", room="beta")
        assert (error["code"], error["room"], error["ref"]) == ("forbidden", "beta", "nope")
        assert (await join(ws, "alpha"))["you"] == {"id": "u-ann", "name": "ann"}
        await assert_usable(ws, "alpha")


async def test_joining_a_room_twice_is_a_bad_request_that_changes_nothing(server: ServerProcess) -> None:
    """A second join of a room gets ``bad_request``; the others see no second join, the member stays once."""
    async with connected(server, "ann") as (ann, hello), connected(server, "bob") as (bob, _):
        await join(bob, "alpha")
        await join(ann, "alpha")
        assert (await expect(bob, "join"))["member"] == hello["you"]
        error = await refusal(ann, "again", type="join", room="alpha")
        assert (error["code"], error["room"], error["ref"]) == ("bad_request", "alpha", "again")
        await assert_usable(ann, "alpha")
        (next_frame,) = await messages(bob, 1)  # a second join would come before it
        assert next_frame["text"] == "still here"
        async with connected(server, "carol") as (carol, _):
            members = (await join(carol, "alpha"))["members"]
        assert [member["id"] for member in members].count(hello["you"]["id"]) == 1


NOT_JOINED: dict[str, dict[str, Any]] = {
    "message": {"type": "message", "text": "hi", "ref": "r"},
    "typing": {"type": "typing"},
    "history": {"type": "history", "ref": "r"},
    "leave": {"type": "leave", "ref": "r"},
}


@pytest.mark.parametrize("kind", NOT_JOINED)
async def test_a_frame_for_a_room_not_joined_is_a_bad_request(server: ServerProcess, kind: str) -> None:
    """message, typing, history and leave naming a room not joined get ``bad_request`` with the room; nothing
    reaches that room's members; the connection stays usable."""
    async with joined(server, "alpha", "vic") as (vic, _), connected(server, "ann") as (ann, hello):
        await join(ann, "beta")
        await send(ann, room="alpha", **NOT_JOINED[kind])
        error, _ = await wait_for(ann, lambda frame: frame["type"] == "error")
        assert (error["code"], error["room"], error["ref"]) == ("bad_request", "alpha", NOT_JOINED[kind].get("ref"))
        await assert_usable(ann, "beta")
        await join(ann, "alpha")
        await say_in(ann, "alpha", "marker")
        # Had anything of the refused frame reached alpha, vic would read it among these two (the join is
        # announced at the end of its presence window: before or after the message).
        first, second = await recv_frame(vic), await recv_frame(vic)
        join_frame, marker = sorted((first, second), key=lambda frame: frame["type"])
        assert join_frame == {"type": "join", "room": "alpha", "member": hello["you"]}
        assert (marker["type"], marker["seq"], marker["text"]) == ("message", 1, "marker")


async def test_a_plain_text_frame_is_a_bad_request_on_ws(server: ServerProcess) -> None:
    """A text frame that is not a JSON object is ``bad_request`` without a room, published nowhere."""
    async with joined(server, "alpha", "vic") as (vic, _), connected(server, "ann") as (ann, _):
        await join(ann, "alpha")
        await expect(vic, "join")
        await ann.send("just some words")
        error = await expect(ann, "error")
        assert (error["code"], error["ref"]) == ("bad_request", None)
        assert "room" not in error
        await assert_usable(ann, "alpha")
        marker = await expect(vic, "message")
        assert (marker["seq"], marker["text"]) == (1, "still here")


async def test_a_join_past_max_rooms_per_connection_is_too_many_rooms(start_server: StartServer) -> None:
    """With ``--max-rooms-per-connection 2`` a third join gets ``too_many_rooms``; after a leave it is welcome."""
    server = start_server(max_rooms_per_connection=2)
    async with connected(server, "ann") as (ann, _):
        await join(ann, "alpha")
        await join(ann, "beta")
        error = await refusal(ann, "third", type="join", room="gamma")
        assert (error["code"], error["room"], error["ref"]) == ("too_many_rooms", "gamma", "third")
        await assert_usable(ann, "beta")
        await leave(ann, "alpha")
        welcome = await join(ann, "gamma")
        assert [member["name"] for member in welcome["members"]] == ["ann"]
        await assert_usable(ann, "gamma")


# --- handshake refusals on /ws -----------------------------------------------------------------------


async def test_a_bad_name_on_ws_is_refused_with_403_as_on_v1(server: ServerProcess) -> None:
    """A name too long for a member is refused at /ws's handshake with HTTP 403 and v1's body."""
    status, body = await refused_handshake(multi_url(server, name="x" * 40))
    assert (status, body["type"], body["code"]) == (403, "error", "forbidden")
    assert (status, body) == await refused_handshake(server.url("alpha", name="x" * 40))


@pytest.mark.parametrize("query", [{"since": 3}, {"epoch": "abc"}, {"since": 3, "epoch": "abc"}])
async def test_since_or_epoch_in_the_ws_address_is_refused_with_403(
    server: ServerProcess, query: dict[str, str | int]
) -> None:
    """``since``/``epoch`` belong in each join frame: in /ws's address they are refused with a forbidden 403."""
    status, body = await refused_handshake(multi_url(server, name="ann", **query))
    assert (status, body["type"], body["code"]) == (403, "error", "forbidden")


async def test_connections_per_address_count_ws_and_v1_alike(start_server: StartServer) -> None:
    """With two connections per address, a v1 and a /ws connection fill it: a third of either kind gets 429."""
    server = start_server(max_connections_per_ip=2)
    async with joined(server, "alpha", "vic"), connected(server, "ann"):
        status, body = await refused_handshake(multi_url(server, name="bob"))
        assert (status, body["type"], body["code"]) == (429, "error", "rate_limited")
        assert (status, body) == await refused_handshake(server.url("alpha", name="carl"))
    await wait_health(server, connections=0, rooms=0)
    async with connected(server, "ann"):
        pass


# --- recovery after a restart ----------------------------------------------------------------------------


@pytest.fixture
def start_durable(tmp_path: Path) -> Iterator[StartServer]:
    """Servers on the command line's default store, all in the test's folder: one ``chat.db`` for them all."""
    yield from servers_on("memory://", {"store": None, "rate_per_second": 0}, cwd=str(tmp_path))


async def test_after_a_restart_one_reconnect_recovers_each_room_from_its_own_since(
    start_durable: StartServer,
) -> None:
    """The server restarts on its store: one reconnect, one join per room with that room's since and epoch, and
    each welcome holds exactly the messages missed there, in order, with ``recovered: true``."""
    first = start_durable()
    async with connected(first, "ann") as (ann, _), connected(first, "wes") as (wes, _):
        epochs = {room: (await join(ann, room))["epoch"] for room in ("alpha", "beta")}
        await join(wes, "alpha")
        await join(wes, "beta")
        assert await say_in(wes, "alpha", "a1", "a2", "a3") == [1, 2, 3]
        assert await say_in(wes, "beta", "b1") == [1]
        seen = await messages(ann, 4)
        assert [(frame["room"], frame["seq"]) for frame in seen] == [
            ("alpha", 1),
            ("alpha", 2),
            ("alpha", 3),
            ("beta", 1),
        ]
        first.terminate()
        await wait_closed(ann, within=15)
        assert ann.close_code in (1001, 1012), ann.close_code
    assert await anyio.to_thread.run_sync(first.wait_exit, 15.0) is not None, "the server outlived its SIGTERM"

    second = start_durable()
    async with connected(second, "wes") as (wes, _):
        await join(wes, "alpha")
        await join(wes, "beta")
        assert await say_in(wes, "alpha", "a4", "a5") == [4, 5]
        assert await say_in(wes, "beta", "b2", "b3", "b4") == [2, 3, 4]
        async with connected(second, "ann") as (ann, _):
            alpha = await join(ann, "alpha", since=3, epoch=epochs["alpha"])
            beta = await join(ann, "beta", since=1, epoch=epochs["beta"])
            assert (alpha["recovered"], alpha["epoch"], alpha["seq"]) == (True, epochs["alpha"], 5)
            assert [(item["seq"], item["text"]) for item in alpha["history"]] == [(4, "a4"), (5, "a5")]
            assert (beta["recovered"], beta["epoch"], beta["seq"]) == (True, epochs["beta"], 4)
            assert [(item["seq"], item["text"]) for item in beta["history"]] == [(2, "b2"), (3, "b3"), (4, "b4")]
            assert await say_in(wes, "alpha", "a6") == [6]
            (live,) = await messages(ann, 1)
            assert (live["room"], live["seq"], live["text"]) == ("alpha", 6, "a6")


# --- the operator's removal --------------------------------------------------------------------------------


async def test_the_operators_removal_takes_a_ws_member_out_of_that_room_only(start_server: StartServer) -> None:
    """DELETE of a /ws member in alpha: it gets ``left`` (reason removed) for alpha alone, alpha's others get
    ``leave``, and it stays connected and in beta."""
    server = start_server(env={"CHAT_API_KEY": KEY})
    async with (
        joined(server, "alpha", "vic") as (vic, _),
        joined(server, "beta", "bea") as (bea, _),
        connected(server, "ann") as (ann, hello),
    ):
        await join(ann, "alpha")
        await join(ann, "beta")
        await expect(vic, "join")
        await expect(bea, "join")
        member = hello["you"]["id"]
        async with httpx.AsyncClient(timeout=WAIT, headers={"Authorization": f"Bearer {KEY}"}) as client:
            response = await client.delete(f"http://{server.base}/api/rooms/alpha/members/{member}")
        assert response.status_code == 200, response.text
        assert await expect(ann, "left") == {"type": "left", "room": "alpha", "ref": None, "reason": "removed"}
        await wait_leave(vic, {member})

        assert await say_in(ann, "beta", "still in beta") == [1]
        assert (await messages(bea, 1))[0]["text"] == "still in beta"
        assert await say(bea, "for ann") == [2]
        (for_ann,) = await messages(ann, 1)
        assert (for_ann["room"], for_ann["text"]) == ("beta", "for ann")
        error = await refusal(ann, "gone", type="message", room="alpha", text="hello?")
        assert (error["code"], error["room"]) == ("bad_request", "alpha")
        assert ann.close_code is None


# --- a slow consumer -----------------------------------------------------------------------------------------

BIG = "x" * 50000


def joined_raw(server: ServerProcess, name: str, rooms: list[str], rcvbuf: int) -> tuple[RawClient, Frame]:
    """A raw /ws client with a small receive buffer that read its hello and joined ``rooms`` (blocking)."""
    raw = RawClient(server.port, f"/ws?name={name}", rcvbuf=rcvbuf)
    try:
        assert raw.upgraded, raw.status_line
        hello = raw.recv_json()
        assert hello["type"] == "hello", hello
        for room in rooms:
            raw.send_frame(0x1, json.dumps({"type": "join", "room": room, "ref": room}).encode())
            welcome = raw.recv_json()
            assert (welcome["type"], welcome["ref"]) == ("welcome", room), welcome
    except BaseException:
        raw.close()
        raise
    return raw, hello


def close_code_of(raw: RawClient) -> int:
    """Read past every frame to the server's close frame; its code (each read bounded by the socket timeout)."""
    while True:
        opcode, payload = raw.recv_frame()
        if opcode == 0x8:
            (code,) = struct.unpack("!H", payload[:2])
            return int(code)


async def test_a_slow_consumer_closes_the_whole_ws_socket_with_1013(start_server: StartServer) -> None:
    """A /ws member in two rooms that stops reading is closed with 1013 and leaves both rooms."""
    server = start_server(rate_per_second=0, queue_bytes=65536, max_text=len(BIG))
    async with (
        joined(server, "flood", "publisher") as (publisher, _),
        joined(server, "quiet", "watcher") as (watcher, _),
    ):
        slow, hello = await anyio.to_thread.run_sync(joined_raw, server, "slow", ["flood", "quiet"], 4096)
        try:
            slow_id = hello["you"]["id"]
            await expect(publisher, "join")
            await expect(watcher, "join")
            # Enough to fill both ends' kernel buffers twice over: the slow member must be out by then.
            limit = 2 * kernel_send_buffer_max() // len(BIG) + 10
            left = False
            with anyio.fail_after(60):
                for seq in range(1, limit + 1):
                    await send(publisher, type="message", text=BIG)
                    echo, before = await wait_for(publisher, lambda frame: frame["type"] == "message")
                    assert echo["seq"] == seq, echo
                    left = any(frame["type"] == "leave" and frame["member"]["id"] == slow_id for frame in before)
                    if left:
                        break
            if not left:  # closed during the flood, its leave announced at the end of the room's presence window
                await wait_leave(publisher, {slow_id})
            await wait_leave(watcher, {slow_id})
            with anyio.fail_after(30):
                code = await anyio.to_thread.run_sync(close_code_of, slow, abandon_on_cancel=True)
            assert code == 1013
            await wait_health(server, connections=2, rooms=2)
        finally:
            slow.close()


# --- two processes on one Redis ------------------------------------------------------------------------------


@pytest.fixture
def start_node(redis_server: RedisServer) -> Iterator[StartServer]:
    """Server processes on the test's own Redis; stopped and checked afterwards."""
    yield from servers_on(redis_server.url, {"rate_per_second": 0})


async def test_a_ws_member_and_v1_members_on_another_process_talk_in_two_rooms(start_node: StartServer) -> None:
    """On one Redis: a /ws member on process one and v1 members on process two exchange messages in two rooms."""
    one, two = start_node(), start_node()
    async with (
        joined(two, "alpha", "vic") as (vic, _),
        joined(two, "beta", "bea") as (bea, _),
        connected(one, "ann") as (ann, hello),
    ):
        assert [member["name"] for member in (await join(ann, "alpha"))["members"]] == ["vic", "ann"]
        assert [member["name"] for member in (await join(ann, "beta"))["members"]] == ["bea", "ann"]
        assert (await expect(vic, "join"))["member"] == hello["you"]
        assert (await expect(bea, "join"))["member"] == hello["you"]

        assert await say_in(ann, "alpha", "to alpha") == [1]
        assert await say_in(ann, "beta", "to beta") == [1]
        # Each v1 member's next message is its own room's: had the other room's reached it, that would come first.
        assert [(frame["room"], frame["text"]) for frame in await messages(vic, 1)] == [("alpha", "to alpha")]
        assert [(frame["room"], frame["text"]) for frame in await messages(bea, 1)] == [("beta", "to beta")]

        assert await say(vic, "from vic") == [2]
        assert await say(bea, "from bea") == [2]
        got = await messages(ann, 2)
        assert [(frame["room"], frame["seq"], frame["text"]) for frame in got] == [
            ("alpha", 2, "from vic"),
            ("beta", 2, "from bea"),
        ]


async def test_redis_restarted_empty_takes_a_ws_member_out_of_each_room_with_left(
    start_node: StartServer, redis_server: RedisServer
) -> None:
    """Redis restarted empty: a /ws member gets ``left`` (reason restart) for each of its rooms and stays connected;
    joining again with its since and epoch gets the new epoch, ``recovered: false``."""
    node = start_node()
    async with connected(node, "ann") as (ann, _):
        epochs = {room: (await join(ann, room))["epoch"] for room in ("alpha", "beta")}
        assert await say_in(ann, "alpha", "before") == [1]
        await anyio.to_thread.run_sync(redis_server.kill)
        await anyio.to_thread.run_sync(redis_server.start)
        lefts = [await expect(ann, "left", within=10) for _ in range(2)]
        assert sorted(lefts, key=lambda frame: str(frame["room"])) == [
            {"type": "left", "room": room, "ref": None, "reason": "restart"} for room in ("alpha", "beta")
        ]
        for room, since in (("alpha", 1), ("beta", 0)):
            welcome = await join(ann, room, since=since, epoch=epochs[room])
            assert (welcome["recovered"], welcome["seq"], welcome["history"]) == (False, 0, [])
            assert welcome["epoch"] != epochs[room]
        assert await say_in(ann, "alpha", "after") == [1]
        assert ann.close_code is None
