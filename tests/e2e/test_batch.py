"""Opt-in coalescing (``batch=1``) against a real server: several frames per message, one per line.

A ``batch=1`` member also shows what ``write_delay`` does: the frames that leave in one write arrive
in one WebSocket message.
"""

from __future__ import annotations

import functools
import json

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.standins import Samples

from .clients import WAIT, Frame, RawClient, expect, send_message
from .server_process import StartServer
from .test_operator import scrape_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def delivered(count: int, samples: Samples) -> bool:
    """Whether /metrics counts ``count`` message frames handed to members' sockets."""
    return samples.get("chat_messages_delivered_total") == count


async def read_lines(ws: ClientConnection, count: int) -> tuple[list[Frame], int]:
    """The next ``count`` frames, however they were packed, and how many WebSocket messages held them."""
    frames: list[Frame] = []
    messages = 0
    with anyio.fail_after(WAIT):
        while len(frames) < count:
            data = await ws.recv()
            assert isinstance(data, str)
            messages += 1
            frames.extend(json.loads(line) for line in data.split("\n"))
    return frames, messages


async def test_batch_member_gets_a_burst_in_fewer_messages(start_server: StartServer, backend_url: str) -> None:
    """A burst of 200 messages reaches a batch=1 member complete and in order, packed in fewer messages."""
    server = start_server(rate_per_second=0)
    batch = await connect(server.url("lobby", name="batched", batch=1), open_timeout=WAIT)
    async with batch:
        welcome, _ = await read_lines(batch, 1)
        assert welcome[0]["type"] == "welcome"
        sender = RawClient(server.port, "/ws/lobby?name=sender")
        try:
            burst = [json.dumps({"type": "message", "text": f"m{index}"}).encode() for index in range(200)]
            sender.send_frames(burst)
            frames, messages = await read_lines(batch, 201)
        finally:
            sender.close()
        frames = [frame for frame in frames if frame["type"] == "message"]
        assert [frame["text"] for frame in frames] == [f"m{i}" for i in range(200)]
        assert [frame["seq"] for frame in frames] == list(range(1, 201))
        if backend_url.startswith("memory"):
            # In one process a burst read at once is fanned out within one loop turn, so it must be
            # packed; through Redis frames come back as the network delivers them, packed or not.
            assert messages < 10


async def test_batch_must_be_0_or_1(start_server: StartServer) -> None:
    """Any other batch value is refused before the handshake, like any invalid join."""
    server = start_server()
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url("lobby", name="x", batch="yes"), open_timeout=WAIT)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(("write_delay", "packed_in"), [(0.0, 2), (1.0, 1)])
async def test_write_delay_packs_messages_that_arrive_apart(
    start_server: StartServer, write_delay: float, packed_in: int
) -> None:
    """Two messages read in different turns leave in one write only when a write delay holds the first back.

    The second is sent only once the server has handed the first to both members' sockets (counted in
    /metrics, which answers in a later turn): without a delay the first has left by then; with one
    second of delay it waits for the second.
    """
    server = start_server(rate_per_second=0, write_delay=write_delay)
    async with connect(server.url("lobby", name="batched", batch=1), open_timeout=WAIT) as batch:
        welcome, _ = await read_lines(batch, 1)
        assert welcome[0]["type"] == "welcome"
        async with connect(server.url("lobby", name="sender"), open_timeout=WAIT) as sender:
            await expect(sender, "welcome")
            joined, _ = await read_lines(batch, 1)
            assert joined[0]["type"] == "join"
            for count, text in enumerate(("first", "second"), start=1):
                await send_message(sender, text)
                await scrape_until(server, functools.partial(delivered, 2 * count))
            frames, messages = await read_lines(batch, 2)
    assert [frame["text"] for frame in frames] == ["first", "second"]
    assert messages == packed_in
