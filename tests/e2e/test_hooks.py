"""A server started with ``--hooks``: every decision's allow, refuse, change, raise and hang path over real sockets,
and the events in its log, on every backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .clients import WAIT, expect, recv_frame
from .server_process import ServerProcess, launch

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOT = Path(__file__).parents[2]
RAISING_HOOKS = 3
"""Tracebacks the tests below cause, one per hook that raises: authenticate, can_join, on_message."""


@pytest.fixture
def server(backend_url: str) -> Iterator[ServerProcess]:
    """A server with the test hooks; it must stop on SIGTERM, and log one traceback per raising hook at most."""
    flags = {"hooks": "tests.e2e.hooked:Hooks", "hook_timeout": 0.5, "presence_window": 0}
    process = launch(backend_url, flags, {"PYTHONPATH": str(ROOT)})
    try:
        yield process
    finally:
        assert process.stop() is None
    assert process.log.count("Traceback") <= RAISING_HOOKS, process.log


@asynccontextmanager
async def socket(server: ServerProcess, path: str, key: str = "key-ann") -> AsyncIterator[ClientConnection]:
    with anyio.fail_after(WAIT):
        ws = await connect(f"ws://{server.base}{path}", additional_headers={"x-api-key": key}, open_timeout=WAIT)
    async with ws:
        yield ws


async def refusal(server: ServerProcess, path: str, key: str = "key-ann") -> tuple[int, dict[str, str]]:
    with pytest.raises(InvalidStatus) as refused, anyio.fail_after(WAIT):
        await connect(f"ws://{server.base}{path}", additional_headers={"x-api-key": key}, open_timeout=WAIT)
    response = refused.value.response
    return response.status_code, json.loads(response.body)


async def test_authenticate_admits_refuses_and_fails_cleanly(server: ServerProcess) -> None:
    """A known key is the member; no key 403; a hook that raises or hangs 503, logged naming the hook."""
    async with socket(server, "/ws/lobby?name=mallory") as ann:
        assert (await expect(ann, "welcome"))["you"] == {"id": "u-ann", "name": "Ann"}
    assert await refusal(server, "/ws/lobby", key="") == (
        403,
        {"type": "error", "code": "forbidden", "detail": "not signed in"},
    )
    for key in ("boom", "hang"):
        status, body = await refusal(server, "/ws", key=key)
        assert (status, body["code"]) == (503, "unavailable")
    server.wait_log("event=hook_failed hook=authenticate", count=2)
    assert server.log_count("took longer than hook_timeout") == 1


async def test_can_join_allows_refuses_and_fails_per_room(server: ServerProcess) -> None:
    """v1: refused handshakes (403, 503); v1.1: an error for that room alone, the connection carries on."""
    assert (await refusal(server, "/ws/staff"))[0] == 403
    assert await refusal(server, "/ws/vip-1") == (403, {"type": "error", "code": "forbidden", "detail": "members only"})
    assert (await refusal(server, "/ws/flaky"))[0] == 503
    async with socket(server, "/ws") as ann:
        await expect(ann, "hello")
        codes = {}
        for ref, room in enumerate(("staff", "vip-1", "flaky", "slow", "lobby")):
            await ann.send(json.dumps({"type": "join", "room": room, "ref": ref}))
            frame = await recv_frame(ann)
            assert frame["ref"] == ref, frame
            codes[room] = frame.get("code", frame["type"])
        assert codes == {
            "staff": "forbidden",
            "vip-1": "forbidden",
            "flaky": "unavailable",
            "slow": "unavailable",
            "lobby": "welcome",
        }
    server.wait_log("event=hook_failed hook=can_join", count=3)


async def test_on_message_changes_refuses_and_fails_for_the_sender_alone(server: ServerProcess) -> None:
    """The room sees only what the hook let out, changed as it said, with no gap in the seqs; the sender gets
    ``forbidden`` or ``unavailable`` for the rest and keeps its connection."""
    async with socket(server, "/ws/lobby", "key-ann") as ann, socket(server, "/ws/lobby", "key-bob") as bob:
        await expect(ann, "welcome")
        await expect(bob, "welcome")
        await expect(ann, "join")
        answers = {}
        for ref, text in enumerate(("spam", "boom", "hang", "oh heck")):
            await ann.send(json.dumps({"type": "message", "text": text, "ref": ref}))
            while (frame := await recv_frame(ann))["type"] == "message":
                pass
            answers[text] = frame.get("code", frame["type"])
        assert answers == {"spam": "forbidden", "boom": "unavailable", "hang": "unavailable", "oh heck": "ack"}
        message = await expect(bob, "message")
        assert (message["seq"], message["text"], message["from"]["id"]) == (1, "oh h**k", "u-ann")


async def test_events_reach_the_host_in_order(server: ServerProcess) -> None:
    """joined, published (with the seq), left, as they happened."""
    async with socket(server, "/ws/lobby") as ann:
        await expect(ann, "welcome")
        await ann.send(json.dumps({"type": "message", "text": "hi"}))
        await expect(ann, "message")
    server.wait_log("hook-event left")
    events = [line.split("hook-event ", 1)[1].strip() for line in server.log.splitlines() if "hook-event" in line]
    assert events == [
        "joined member=u-ann room=lobby",
        "published member=u-ann room=lobby seq=1",
        "left member=u-ann room=lobby",
    ]
