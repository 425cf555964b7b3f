"""A member that stops reading is dropped; everyone else keeps getting everything, in order."""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from .clients import TCP_CLOSE, joined, kernel_send_buffer_max, parse, raw_join, wait_health, wait_tcp_state
from .server_process import StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

MEMBERS = 50
MESSAGES = 3000
"""Messages published at least; more while the slow member is still in (its kernel buffers may be larger)."""
AFTER_DROP = 500
"""Messages published after the slow member's removal, which the others must get as well."""
TEXT_SIZE = 2048
QUEUE_BYTES = 65536
WINDOW = 16
"""Messages the publisher may have out ahead of the slowest healthy member: 16 x 2 KiB stays well under
the 64 KiB buffer, so a healthy member can never be mistaken for a slow one however the CPU is shared."""
RESET_DEADLINE = 30.0
"""Seconds from the slow member's removal to the reset of its socket (expected: close_timeout + 1 = 11)."""


def text_of(index: int) -> str:
    head = f"message {index:05d} "
    return head + "x" * (TEXT_SIZE - len(head))


class Flood:
    """What the publisher and the healthy members share: how far the slowest got, when the slow one left."""

    def __init__(self, members: int, limit: int) -> None:
        self.members = members
        self.limit = limit
        self.low = 0
        self.sent = 0
        self.total: int | None = None
        self.dropped_at: float | None = None
        self.dropped_after: int | None = None
        self.received: list[int] = []  # how many messages each healthy member held when it finished
        self._reached = [0] * (limit + 1)
        self._changed = anyio.Event()

    def advance(self, count: int) -> None:
        """One member now holds ``count`` messages."""
        self._reached[count] += 1
        if self._reached[count] == self.members:
            self.low = count
            self._changed.set()
            self._changed = anyio.Event()

    def dropped(self) -> None:
        """A member heard that the slow one left."""
        if self.dropped_at is None:
            self.dropped_at = time.monotonic()
            self.dropped_after = self.sent

    async def wait_low(self, count: int) -> None:
        while self.low < count:
            await self._changed.wait()


async def receive_all(ws: ClientConnection, flood: Flood, slow_id: str, publisher: bool) -> None:
    """Every message, checked in order as it comes, until all arrived, the slow member left, and (for the
    publisher) every ack came back."""
    count = 0
    acked = 0
    left = False
    while flood.total is None or count < flood.total or not left or (publisher and acked < flood.total):
        frame = parse(await ws.recv())
        if frame["type"] == "message":
            count += 1
            assert frame["seq"] == count, f"gap or reorder: {frame['seq']} after {count - 1}"
            assert frame["text"] == text_of(count)
            assert frame["from"]["name"] == "m0"
            flood.advance(count)
        elif frame["type"] == "leave":
            assert frame["member"]["id"] == slow_id, frame
            assert not left, "two leaves"
            left = True
            flood.dropped()
        elif frame["type"] == "ack":
            assert publisher, frame
            acked += 1
            assert frame["ref"] == frame["seq"] == acked, frame
        else:
            assert frame["type"] == "join", frame
    flood.received.append(count)


async def publish(ws: ClientConnection, flood: Flood) -> None:
    """Send until MESSAGES are out and AFTER_DROP more followed the slow member's removal."""
    for index in range(1, flood.limit + 1):
        if index >= MESSAGES and flood.dropped_after is not None and index >= flood.dropped_after + AFTER_DROP:
            flood.total = index  # before the send: a member may hold the last message before this task resumes
        await flood.wait_low(index - WINDOW)
        await ws.send(json.dumps({"type": "message", "text": text_of(index), "ref": index}))
        flood.sent = index
        if flood.total is not None:
            return
    raise AssertionError(
        f"no leave for the member that never reads after {flood.limit} messages: the server was made to hold"
        " more for it than twice what its kernel buffers can, so it was not removed, or its leave is late"
    )


async def test_slow_consumer_is_dropped_and_others_receive_everything(start_server: StartServer) -> None:
    """A member that never reads is removed; 49 others get all 3000+ messages gap-free; its socket is reset."""
    server = start_server(rate_per_second=0, queue_bytes=QUEUE_BYTES)
    async with AsyncExitStack() as stack:
        healthy = [(await stack.enter_async_context(joined(server, "flood", f"m{i}")))[0] for i in range(MEMBERS - 1)]
        slow, welcome = await raw_join(server, "flood", "slow", rcvbuf=4096)
        stack.callback(slow.close)
        assert welcome["seq"] == 0
        assert len(welcome["members"]) == MEMBERS
        slow_id = welcome["you"]["id"]

        # Twice the largest kernel send buffer (2 x 4 MiB here): the slow member must be out, everyone told, by then.
        limit = max(MESSAGES, 2 * kernel_send_buffer_max() // TEXT_SIZE) + AFTER_DROP
        flood = Flood(len(healthy), limit)
        with anyio.fail_after(90):
            async with anyio.create_task_group() as group:
                for index, ws in enumerate(healthy):
                    group.start_soon(receive_all, ws, flood, slow_id, index == 0)
                group.start_soon(publish, healthy[0], flood)
        # Every healthy member finished holding exactly what was published: 3000+, of which AFTER_DROP
        # or more after the slow member's removal.
        assert flood.total is not None
        assert flood.dropped_at is not None
        assert flood.dropped_after is not None
        assert flood.total >= max(MESSAGES, flood.dropped_after + AFTER_DROP)
        assert flood.received == [flood.total] * (MEMBERS - 1)
        await wait_health(server, connections=MEMBERS - 1, rooms=1)
        async with joined(server, "flood", "newcomer") as (_, late):
            assert slow_id not in {member["id"] for member in late["members"]}
            assert len(late["members"]) == MEMBERS

        # uvicorn gives the close handshake close_timeout (10 s); the server then resets the socket.
        await wait_tcp_state(slow, TCP_CLOSE, within=flood.dropped_at + RESET_DEADLINE - time.monotonic())
        assert isinstance(slow.drain(), ConnectionResetError), "the socket was closed, not reset"
