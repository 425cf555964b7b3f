"""A fuzzing client against a live server: thousands of random frames, and the normal members lose nothing."""

from __future__ import annotations

import json
import random

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .clients import WAIT, RawClient, joined, parse, say
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

FRAMES = 3000
SEED = 20240601
ROOM = "fuzz"


def random_frame(rng: random.Random) -> str | bytes:
    """One frame of a random kind: text, JSON of odd shapes, binary, oversized, deeply nested."""
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800)])) for _ in range(40))
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 2:
        fields: dict[str, object] = {"type": rng.choice(["message", "history", "ping", "typing", "x", 7, None])}
        for key in rng.sample(["text", "ref", "before", "limit"], rng.randrange(0, 4)):
            fields[key] = rng.choice([rng.randrange(-5, 200), "t" * rng.randrange(0, 80), None, [], {"a": 1}, 1.5])
        return json.dumps(fields)
    if kind == 3:
        return "{" * rng.randrange(1, 50) + rng.choice(["", "}", '"'])
    if kind == 4:
        return "x" * rng.randrange(4001, 9000)
    if kind == 5:
        return '{"a":' * 2000 + "1" + "}" * 2000
    if kind == 6:
        return json.dumps({"type": "message", "text": "\\ud800" if rng.random() < 0.5 else " ", "ref": "r"})
    return rng.choice(["", " ", "\x00", "\n", "{}", "[]", "null"])


async def fuzz(server: ServerProcess, frames: int, seed: int) -> int:
    """Send ``frames`` random frames, reconnecting whenever the server closes the fuzzer; returns the reconnects."""
    rng = random.Random(seed)
    sent = reconnects = 0
    while sent < frames:
        ws: ClientConnection = await connect(server.url(ROOM, name="fuzzer"), open_timeout=WAIT, max_queue=None)
        try:
            async with ws:
                while sent < frames:
                    await ws.send(random_frame(rng))
                    sent += 1
                    if sent % 500 == 0:
                        await anyio.to_thread.run_sync(invalid_utf8, server)
        except ConnectionClosed:
            reconnects += 1
    return reconnects


def invalid_utf8(server: ServerProcess) -> None:
    """A raw client whose text frame is not UTF-8 (the websockets client cannot send one)."""
    raw = RawClient(server.port, f"/ws/{ROOM}?name=raw")
    try:
        raw.recv_json()
        raw.send_frame(0x1, b"\xff\xfe broken")
        raw.drain()
    finally:
        raw.close()


async def test_random_frames_leave_the_others_served_without_loss(start_server: StartServer) -> None:
    """While a fuzzer sends thousands of random frames into the room, every message of a normal member arrives."""
    server = start_server(rate_per_second=0)
    async with joined(server, ROOM, "sender") as (sender, _), joined(server, ROOM, "reader") as (reader, _):
        acked: list[int] = []
        async with anyio.create_task_group() as tg:

            async def chat() -> None:
                for batch in range(20):
                    acked.extend(await say(sender, *(f"normal {batch}-{index}" for index in range(10)), within=30))

            tg.start_soon(chat)
            with anyio.fail_after(60):  # each connect is bounded, the reconnects are not
                await fuzz(server, FRAMES, SEED)
        got: list[int] = []
        with anyio.fail_after(30):
            while len(got) < len(acked):
                frame = parse(await reader.recv())
                if frame["type"] == "message" and frame["from"]["name"] == "sender":
                    got.append(frame["seq"])
        assert got == acked
        (after,) = await say(sender, "after the fuzz")  # the fuzzer's valid messages take seqs too
        assert after > acked[-1]
        with anyio.fail_after(WAIT):
            while (frame := parse(await reader.recv()))["type"] != "message" or frame["from"]["name"] != "sender":
                pass
        assert (frame["seq"], frame["text"]) == (after, "after the fuzz")
