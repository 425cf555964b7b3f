"""A closed connection leaves nothing behind: with the cyclic collector off, every object a connection made is freed
by reference counting alone once it is gone, however it went, on both delivery paths, v1 and v1.1, every backend.

A server that holds thousands of connections collects rarely (``scripts/serve`` freezes what it imported and
raises the young threshold), so an object left in a reference cycle stays until the next full collection: under
churn that is memory climbing for minutes. Each kind below is one a connection makes: its endpoint (with its
rate-limit bucket and abuse counter), its ``Connection`` (and its rooms' ``Subscription``s), its identity, the
Starlette ``WebSocket``, and on the direct path the protocol that owns the socket.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from chat.abuse import Misconduct
from chat.app import create_app
from chat.auth import Identity
from chat.chat import Chat, chat_of
from chat.connection import Connection
from chat.endpoint import SocketEndpoint
from chat.limits import TokenBucket
from chat.protocol import Member
from chat.settings import Settings
from chat.uvicorn import ChatHttpProtocol, ChatWebSocketProtocol
from tests import tokens
from tests.test_uvicorn_contract import RawSocket, run_server
from tests.wire import client_frame

pytestmark = pytest.mark.anyio

WAIT = 5.0
KINDS: tuple[type, ...] = (
    SocketEndpoint,
    Connection,
    TokenBucket,
    Misconduct,
    Identity,
    WebSocket,
    ChatWebSocketProtocol,
)
"""What a connection makes that must go with it."""
PATHS: dict[str, dict[str, Any]] = {
    "direct": {"ws": ChatWebSocketProtocol, "http": ChatHttpProtocol},
    "queued": {"ws": "websockets-sansio", "http": "httptools"},
}
ENDINGS = ("close", "reset", "stall", "closed by the server")
ROOM = "lobby"
TEXT = 1


def alive() -> Counter[str]:
    """The objects of ``KINDS`` that exist now, by kind (the collector off: nothing waits for it). By their type,
    not ``isinstance``, which a dead weak proxy among the objects would answer with ReferenceError."""
    return Counter(kind.__name__ for item in gc.get_objects() for kind in KINDS if issubclass(type(item), kind))


async def wait_until_alive_is(expected: Counter[str], chat: Chat) -> None:
    """Poll (bounded) until the connection is released and only ``expected`` is alive."""
    now, connections = Counter[str](), 0
    try:
        with anyio.fail_after(WAIT):
            while True:
                connections = chat.registry.connections
                if connections == 1:
                    now = alive()
                    if now == expected:
                        return
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{connections} connections; alive {now}, want {expected}") from None


def url(port: int, multiroom: bool, name: str) -> str:
    path = "/ws" if multiroom else f"/ws/{ROOM}"
    return f"ws://127.0.0.1:{port}{path}?name={name}&token={tokens.token(sub=name, name=name)}"


async def frames_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        while (frame := json.loads(await ws.recv()))["type"] != kind:
            pass
    assert isinstance(frame, dict)
    return frame


@asynccontextmanager
async def member(port: int, multiroom: bool, name: str) -> AsyncIterator[ClientConnection]:
    """A joined member (its welcome read)."""
    with anyio.fail_after(WAIT):
        ws = await connect(url(port, multiroom, name), max_queue=None)
    if multiroom:
        await ws.send(json.dumps({"type": "join", "room": ROOM}))
    await frames_until(ws, "welcome")
    yield ws


async def busy_member(port: int, multiroom: bool) -> ClientConnection:
    """A member that said something (its rate-limit bucket made) and sent a bad frame (its abuse counter made)."""
    async with member(port, multiroom, "churner") as ws:
        await ws.send(json.dumps({"type": "message", "room": ROOM, "text": "hi", "ref": 1}))
        await frames_until(ws, "ack")
        await ws.send("{")
        assert (await frames_until(ws, "error"))["code"] == "bad_request"
        return ws


async def stalled_member(port: int, multiroom: bool, chat: Chat) -> None:
    """A member that stops reading while the room talks, is closed by the server as a slow consumer, then resets."""
    raw = await RawSocket.connect(port, rcvbuf=4096)
    path = url(port, multiroom, "stalled").removeprefix(f"ws://127.0.0.1:{port}")
    await raw.send(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await raw.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    if multiroom:
        await raw.send(client_frame(TEXT, json.dumps({"type": "join", "room": ROOM}).encode()))
    await raw.read_until(b'{"type":"welcome"')
    with anyio.fail_after(WAIT):
        while in_room(chat, "stalled"):  # closed by the server as a slow consumer: taken out of the room
            await chat.publish(ROOM, Member("flood", "flood"), "x" * 3000)
            await asyncio.sleep(0)  # each in a write of its own: the steady member reads them as they come
    raw.reset()


def in_room(chat: Chat, member_id: str) -> bool:
    """Whether the member is in the room (keeping no reference to its connection)."""
    return any(connection.member.id == member_id for connection in chat.registry.rooms().get(ROOM, ()))


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("multiroom", [False, True], ids=["v1", "v1.1"])
@pytest.mark.parametrize("path", PATHS)
async def test_a_gone_connection_leaves_nothing_behind(
    backend_url: str, path: str, multiroom: bool, ending: str
) -> None:
    """Once a member is gone, however it went, every object its connection made is freed at once."""
    settings = Settings(
        backend=backend_url, jwt_secret=tokens.SECRET, max_frame=4096, send_timeout=0.5, presence_window=0
    )
    app = create_app(settings)
    chat = chat_of({"app": app})
    async with run_server(app, **PATHS[path]) as running, member(running.port, False, "steady") as steady:
        await steady.send(json.dumps({"type": "message", "text": "warm", "ref": 0}))
        await frames_until(steady, "ack")
        before = alive()
        if ending == "stall":
            await stalled_member(running.port, multiroom, chat)
        else:
            ws = await busy_member(running.port, multiroom)
            if ending == "close":
                await ws.close()
            elif ending == "reset":
                ws.transport.abort()
            else:
                await ws.send("x" * 5000)  # over max_frame: the server closes with 1009
                with anyio.fail_after(WAIT):
                    await ws.wait_closed()
                assert ws.close_code == 1009
            del ws
        await wait_until_alive_is(before, chat)
        if ending == "stall":
            assert chat.metrics.slow_consumers._value.get() == 1, "closed as a slow consumer"
