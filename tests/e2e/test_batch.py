"""Opt-in coalescing (``batch=1``) against a real server: several frames per message, one per line."""

from __future__ import annotations

import json

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .clients import WAIT, Frame, RawClient
from .server_process import StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


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
