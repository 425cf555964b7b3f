"""Delivery over a real server: rooms are isolated, order is total, reconnecting recovers the gap."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from .clients import Frame, expect, joined, messages, parse, recv_frame, say, send_message, wait_leave
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


async def test_a_message_never_reaches_another_room(server: ServerProcess) -> None:
    """A message in room A never reaches a member of room B."""
    async with (
        joined(server, "room-a", "alice") as (alice, _),
        joined(server, "room-b", "bob") as (bob, _),
        joined(server, "room-b", "carol") as (carol, _),
    ):
        await expect(bob, "join")
        assert await say(alice, "for room A only") == [1]

        await send_message(carol, "marker")
        frame = await recv_frame(bob)
        assert frame["type"] == "message", frame
        assert (frame["room"], frame["seq"], frame["text"]) == ("room-b", 1, "marker")


SENDERS = 4
LISTENERS = 2
PER_SENDER = 250
TOTAL = SENDERS * PER_SENDER
IN_FLIGHT = 8
"""Unacknowledged messages each sender may have out, so the four senders really interleave."""


class Member:
    """One member of the ordering test: what it received, and (for a sender) its acks."""

    def __init__(self, ws: ClientConnection, welcome: Frame, sends: bool) -> None:
        self.ws = ws
        self.id: str = welcome["you"]["id"]
        self.name: str = welcome["you"]["name"]
        self.sends = sends
        self.received: list[Frame] = []
        self.acks: dict[int, int] = {}
        self.window = anyio.Semaphore(IN_FLIGHT)

    async def receive(self) -> None:
        while len(self.received) < TOTAL or (self.sends and len(self.acks) < PER_SENDER):
            frame = parse(await self.ws.recv())
            if frame["type"] == "message":
                self.received.append(frame)
            elif frame["type"] == "ack":
                assert self.sends, frame
                self.acks[frame["ref"]] = frame["seq"]
                self.window.release()
            else:
                assert frame["type"] == "join", frame

    async def send(self) -> None:
        for index in range(PER_SENDER):
            await self.window.acquire()
            await send_message(self.ws, f"{self.name}:{index}", index)


async def test_concurrent_senders_give_every_member_the_same_gap_free_order(start_server: StartServer) -> None:
    """1,000 messages from 4 concurrent senders reach all 6 members in one order, seq 1..1000, every ack included."""
    server = start_server(rate_per_second=0)
    async with AsyncExitStack() as stack:
        members = []
        for index in range(SENDERS + LISTENERS):
            ws, welcome = await stack.enter_async_context(joined(server, "busy", f"member{index}"))
            members.append(Member(ws, welcome, sends=index < SENDERS))
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for member in members:
                    group.start_soon(member.receive)
                    if member.sends:
                        group.start_soon(member.send)

    reference = [(frame["seq"], frame["from"]["id"], frame["text"]) for frame in members[0].received]
    assert [seq for seq, _, _ in reference] == list(range(1, TOTAL + 1))
    for member in members[1:]:
        assert [(frame["seq"], frame["from"]["id"], frame["text"]) for frame in member.received] == reference
    by_seq = {seq: (sender, text) for seq, sender, text in reference}
    acked: set[int] = set()
    for member in members[:SENDERS]:
        assert sorted(member.acks) == list(range(PER_SENDER))
        for ref, seq in member.acks.items():
            assert by_seq[seq] == (member.id, f"{member.name}:{ref}")
        own = [int(text.split(":")[1]) for sender, text in by_seq.values() if sender == member.id]
        assert own == list(range(PER_SENDER)), "one sender's messages out of their sending order"
        acked |= set(member.acks.values())
    assert acked == set(range(1, TOTAL + 1))


async def test_reconnect_with_since_and_epoch_recovers_exactly_the_missed_messages(server: ServerProcess) -> None:
    """A member that reconnects with since/epoch gets recovered: true and exactly the messages it missed, in order."""
    async with joined(server, "recover", "stay") as (stay, _):
        async with joined(server, "recover", "away") as (away, first):
            await expect(stay, "join")
            assert await say(stay, "one", "two", "three") == [1, 2, 3]
            seen = await messages(away, 3)
            epoch = first["epoch"]
        await wait_leave(stay, {first["you"]["id"]})
        missed = ["four", "five", "six", "seven", "eight"]
        assert await say(stay, *missed) == [4, 5, 6, 7, 8]

        async with joined(server, "recover", "away", since=seen[-1]["seq"], epoch=epoch) as (_, again):
            assert again["recovered"] is True
            assert again["epoch"] == epoch
            assert again["seq"] == 8
            assert [(m["seq"], m["text"]) for m in again["history"]] == list(enumerate(missed, start=4))


async def test_reconnect_with_a_wrong_epoch_gets_the_latest_history_unrecovered(start_server: StartServer) -> None:
    """A reconnect whose epoch is not the room's gets recovered: false and the latest 50 messages."""
    server = start_server(rate_per_second=0)
    async with joined(server, "epochs", "stay") as (stay, welcome):
        texts = [f"text {index}" for index in range(1, 61)]
        assert await say(stay, *texts) == list(range(1, 61))
        async with joined(server, "epochs", "back", since=5, epoch="not" + welcome["epoch"]) as (_, again):
            assert again["recovered"] is False
            assert again["epoch"] == welcome["epoch"]
            assert [(m["seq"], m["text"]) for m in again["history"]] == list(enumerate(texts, start=1))[10:]


async def test_a_gap_older_than_the_history_is_not_recovered(start_server: StartServer) -> None:
    """A since older than the retained history gets recovered: false, not a history with a hole in it."""
    server = start_server(history_size=10, history_on_join=5)
    async with joined(server, "short", "stay") as (stay, welcome):
        assert await say(stay, *(f"text {index}" for index in range(1, 16))) == list(range(1, 16))
        async with joined(server, "short", "back", since=2, epoch=welcome["epoch"]) as (_, again):
            assert again["recovered"] is False
            assert [m["seq"] for m in again["history"]] == [11, 12, 13, 14, 15]


@pytest.mark.parametrize("since", [0, 3])
async def test_a_reconnect_with_nothing_missed_is_recovered_with_an_empty_history(
    server: ServerProcess, since: int
) -> None:
    """A since equal to the room's seq recovers nothing, successfully (since=0 in an empty room too)."""
    async with joined(server, f"uptodate{since}", "stay") as (stay, welcome):
        if since:
            assert await say(stay, "a", "b", "c") == [1, 2, 3]
        async with joined(server, f"uptodate{since}", "back", since=since, epoch=welcome["epoch"]) as (_, again):
            assert again["recovered"] is True
            assert again["history"] == []
            assert again["seq"] == since


async def test_text_frames_that_are_not_json_are_messages(server: ServerProcess) -> None:
    """A plain text frame is broadcast as a message with the whole frame as its text."""
    async with joined(server, "plain", "alice") as (alice, _), joined(server, "plain", "bob") as (bob, _):
        await expect(alice, "join")
        await alice.send("hello, plain text")
        for ws in (alice, bob):
            frame = await expect(ws, "message")
            assert (frame["seq"], frame["text"], frame["from"]["name"]) == (1, "hello, plain text", "alice")
        history_request = {"type": "history", "ref": "h"}
        await bob.send(json.dumps(history_request))
        history = await expect(bob, "history")
        assert [m["text"] for m in history["messages"]] == ["hello, plain text"]
