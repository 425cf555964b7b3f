"""A ``Room`` over a recording link: sends settle on acks, history on its answer, left and refusals end it."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from chat.client import Member, Message, Refused, Rejoined, Removed, RoomClosed, ServerError
from chat.client.client import Room, Tasks
from chat.client.links import MultiRoomLink, Options

pytestmark = pytest.mark.anyio

ROOM = "lobby"
ME = {"id": "me1", "name": "ann"}
WAIT = 5.0


class RecordingLink(MultiRoomLink):
    """A live /ws link that records what it would send."""

    def __init__(self) -> None:
        super().__init__(Options("ws://127.0.0.1:9", random=lambda: 0.0), Tasks())
        self.live = True
        self.sent: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def write(self, frames: list[dict[str, Any]]) -> bool:
        self.sent.extend(frames)
        self.changed.set()
        return True

    async def sent_a(self, kind: str) -> dict[str, Any]:
        """The first frame of ``kind`` written (waiting for it)."""
        with anyio.fail_after(WAIT):
            while not (frames := [frame for frame in self.sent if frame["type"] == kind]):
                self.changed.clear()
                await self.changed.wait()
        self.sent.remove(frames[0])
        return frames[0]


def welcome(seq: int = 0, epoch: str = "e1", recovered: bool = False) -> dict[str, Any]:
    return {"type": "welcome", "room": ROOM, "you": ME, "members": [ME], "seq": seq, "epoch": epoch,
            "recovered": recovered, "history": []}  # fmt: skip


async def joined_room() -> tuple[Room, RecordingLink]:
    link = RecordingLink()
    room = Room(ROOM, max_outbox=10, max_events=100, on_stop=lambda _: None)
    room.link = link
    await link.add(room)
    join = await link.sent_a("join")
    await room.receive({**welcome(), "ref": join["ref"]})
    await room.joined()
    return room, link


async def test_send_resolves_with_the_seq_of_its_ack() -> None:
    """The message frame goes out with a ref; the ack with that ref resolves send() with its seq."""
    room, link = await joined_room()
    sending = asyncio.create_task(room.send("hi"))
    frame = await link.sent_a("message")
    await room.receive({"type": "ack", "room": ROOM, "ref": frame["ref"], "seq": 1})
    with anyio.fail_after(WAIT):
        assert await sending == 1


async def test_a_refused_send_raises_server_error() -> None:
    """An error answering the message: send() raises ServerError with its code."""
    room, link = await joined_room()
    sending = asyncio.create_task(room.send("hi"))
    frame = await link.sent_a("message")
    await room.receive({"type": "error", "room": ROOM, "ref": frame["ref"], "code": "too_large", "detail": "no"})
    with anyio.fail_after(WAIT), pytest.raises(ServerError, match="too_large"):
        await sending


async def test_a_rate_limited_send_goes_out_again_and_resolves() -> None:
    """rate_limited: the same message is sent again after a pause, and its ack resolves send()."""
    room, link = await joined_room()
    sending = asyncio.create_task(room.send("hi"))
    first = await link.sent_a("message")
    await room.receive({"type": "error", "room": ROOM, "ref": first["ref"], "code": "rate_limited", "detail": ""})
    again = await link.sent_a("message")
    assert again == first
    await room.receive({"type": "ack", "room": ROOM, "ref": again["ref"], "seq": 7})
    with anyio.fail_after(WAIT):
        assert await sending == 7
    await link.tasks.aclose()


async def test_history_resolves_with_the_messages_of_its_answer() -> None:
    """The history frame names before and limit; its answer's messages come back parsed."""
    room, link = await joined_room()
    asking = asyncio.create_task(room.history(before=5, limit=2))
    frame = await link.sent_a("history")
    assert (frame["before"], frame["limit"]) == (5, 2)
    item = {"seq": 4, "from": ME, "text": "old", "ts": 9}
    await room.receive({"type": "history", "room": ROOM, "ref": frame["ref"], "messages": [item]})
    with anyio.fail_after(WAIT):
        assert [m.text for m in await asking] == ["old"]


async def test_a_restart_rejoins_from_where_the_room_was() -> None:
    """left with restart: a join with since/epoch goes out at once; its welcome yields Rejoined."""
    room, link = await joined_room()
    await room.receive({"type": "message", "room": ROOM, "seq": 3, "from": ME, "text": "x", "ts": 0})
    await room.receive({"type": "left", "room": ROOM, "ref": None, "reason": "restart"})
    join = await link.sent_a("join")
    assert (join["since"], join["epoch"]) == (3, "e1")
    await room.receive({**welcome(seq=0, epoch="e2"), "ref": join["ref"]})
    with anyio.fail_after(WAIT):
        assert [await room.__anext__(), await room.__anext__()] == [
            Message(ROOM, 3, Member("me1", "ann"), "x", 0),
            Rejoined(ROOM, False, "e2"),
        ]


async def test_removal_ends_the_room_and_fails_what_waits() -> None:
    """left with removed: Removed, then the end; a send waiting for its ack raises RoomClosed."""
    room, link = await joined_room()
    sending = asyncio.create_task(room.send("hi"))
    await link.sent_a("message")
    await room.receive({"type": "left", "room": ROOM, "ref": None, "reason": "removed"})
    with anyio.fail_after(WAIT):
        assert [event async for event in room] == [Removed(ROOM)]
        with pytest.raises(RoomClosed):
            await sending
    assert ROOM not in link.by_name


async def test_a_refused_join_raises_from_joined() -> None:
    """error forbidden answering the join: joined() raises Refused, and so does the iteration."""
    link = RecordingLink()
    room = Room(ROOM, max_outbox=10, max_events=100, on_stop=lambda _: None)
    room.link = link
    await link.add(room)
    join = await link.sent_a("join")
    await room.receive({"type": "error", "room": ROOM, "ref": join["ref"], "code": "forbidden", "detail": "no"})
    with anyio.fail_after(WAIT):
        with pytest.raises(Refused, match="forbidden"):
            await room.joined()
        with pytest.raises(Refused):
            await room.__anext__()
