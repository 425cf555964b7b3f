"""``ChatWebSocketProtocol`` under a real uvicorn, through real sockets: what it adds to uvicorn's protocol.

The app is ``EchoApp`` (``tests/test_uvicorn_contract.py``): it hands each connection's direct
writer to the test, which writes through it from the same event loop, as the chat app does.
"""

from __future__ import annotations

import gc
import logging
import struct
import types
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from chat.frames import text_frame
from chat.uvicorn.websocket import ChatWebSocketProtocol
from tests.test_uvicorn_contract import (
    CLOSE,
    TEXT,
    WAIT,
    EchoApp,
    RawSocket,
    Running,
    Session,
    anyio_backend,  # noqa: F401 - the fixture: every test on both loops
    close_code,
    close_frame,
    ended,
    run_server,
)
from tests.wire import client_frame

pytestmark = pytest.mark.anyio

BIG = 16 * 1024 * 1024
"""Bytes that the kernel buffers cannot take at once (Linux grows a socket's send buffer to 4 MiB at most)."""
SMALL_RCVBUF = 4096
SHORT = 0.1
"""Seconds for the timeouts a test waits out (``stall_timeout``, ``close_timeout``)."""


@asynccontextmanager
async def echo_client(running: Running) -> AsyncIterator[ClientConnection]:
    """A ``websockets`` client of the server."""
    with anyio.fail_after(WAIT):
        client = await connect(f"ws://127.0.0.1:{running.port}/", open_timeout=WAIT, close_timeout=WAIT)
    async with client:
        yield client


async def received(client: ClientConnection, count: int) -> list[str | bytes]:
    """The next ``count`` messages."""
    with anyio.fail_after(WAIT):
        return [await client.recv() for _ in range(count)]


def write(session: Session, *texts: str) -> None:
    """Write text frames through the session's direct writer, now (in this event-loop turn)."""
    for text in texts:
        session.writer.direct_write(text, text_frame(text.encode()))


def write_big(session: Session) -> None:
    """Write one frame the kernel cannot take at once: the socket is full while the peer does not read."""
    write(session, "x" * BIG)
    session.writer.flush()
    assert session.writer.direct_buffered() > 0, "the kernel took the whole frame: the socket is not full"


def closing_hook(writer: ChatWebSocketProtocol) -> Callable[[], None]:
    """An ``on_stall`` that closes the connection (it refers to the protocol that refers to it)."""
    return lambda: writer.direct_close(4001, "too slow for this app")


class TransportSpy:
    """Stands in for the protocol's transport: records writes (with the loop's time) and tells of an abort."""

    def __init__(self, protocol: ChatWebSocketProtocol) -> None:
        self._transport = protocol.transport
        self._loop = protocol.loop
        self.writes: list[tuple[float, bytes]] = []
        self.aborted = anyio.Event()
        protocol.transport = self  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        self.writes.append((self._loop.time(), bytes(data)))
        self._transport.write(data)

    def abort(self) -> None:
        self.aborted.set()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    async def wait_aborted(self) -> None:
        with anyio.fail_after(WAIT):
            await self.aborted.wait()


# --- the handshake httptools parsed ----------------------------------------------------------------

HANDSHAKE = (
    "GET /chat/room%201?name=ann HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n"
)
"""An upgrade request answered from httptools' parse; with ``Content-Length: 0``, ``websockets`` parses it again."""


class ScopeApp:
    """Keeps each connection's scope, accepts it with a header of its own, and waits for the disconnect."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept", "headers": [(b"x-app", b"yes")], "subprotocol": "chat.v1"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def answered(port: int, request: str) -> tuple[RawSocket, bytes]:
    """An open connection and the head of the server's answer to its upgrade ``request``."""
    raw = await RawSocket.connect(port)
    await raw.send(request.encode() + b"\r\n")
    return raw, await raw.read_until(b"\r\n\r\n")


def handshake_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged about a handshake, without the client's address and port."""
    lines = [record.getMessage().split(" - ")[-1] for record in caplog.records if record.name == "uvicorn.error"]
    return [line for line in lines if line[:1] in "<>=" or "WebSocket" in line or "connection" in line]


def comparable(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope without what differs between two connections: the client's port, the writer, a body's header."""
    return scope | {
        "client": scope["client"][0],
        "extensions": sorted(scope["extensions"]),
        "headers": [header for header in scope["headers"] if header[0] != b"content-length"],
    }


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
async def test_a_handshake_httptools_parsed_is_answered_as_websockets_would(
    level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The same request, answered from httptools' parse or parsed again by ``websockets``: the same answer, scope
    and log lines (at DEBUG, where ``websockets`` logs every line of both, it parses both)."""
    caplog.set_level(level, logger="uvicorn.error")
    app = ScopeApp()
    heads, logs = [], []
    async with run_server(app, root_path="/base", server_header=False, date_header=False) as running:
        for request in (HANDSHAKE, HANDSHAKE + "Content-Length: 0\r\n"):
            caplog.clear()
            raw, head = await answered(running.port, request)
            raw.close()
            heads.append(head)
            logs.append(handshake_lines(caplog))
    assert heads[0] == heads[1]
    assert heads[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"x-app: yes\r\nSec-WebSocket-Protocol: chat.v1" in heads[0]
    assert logs[0] == [line for line in logs[1] if "content-length" not in line]
    assert "connection open" in logs[0]
    fast_scope, slow_scope = map(comparable, app.scopes)
    assert fast_scope == slow_scope
    assert (fast_scope["path"], fast_scope["query_string"]) == ("/base/chat/room 1", b"name=ann")


async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Refuse every connection before accepting it."""
    await receive()
    await send({"type": "websocket.close"})


async def test_a_refusal_httptools_parsed_is_answered_and_logged_as_websockets_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request refused before its accept: the same 403 and the same log lines, whichever parse it had."""
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    heads, logs = [], []
    async with run_server(refuse, server_header=False, date_header=False) as running:
        for request in (HANDSHAKE, HANDSHAKE + "Content-Length: 0\r\n"):
            caplog.clear()
            raw, head = await answered(running.port, request)
            await raw.read_to_end()
            raw.close()
            heads.append(head)
            logs.append(handshake_lines(caplog))
    assert heads[0] == heads[1]
    assert heads[0].startswith(b"HTTP/1.1 403 ")
    assert logs[0] == logs[1]
    assert logs[0] == ['"WebSocket /chat/room%201?name=ann" 403', "connection rejected (403 Forbidden)"]


async def test_an_open_connection_keeps_nothing_of_its_handshake_request() -> None:
    """Once open, a connection holds no parsed copy of its upgrade request (only the scope's headers)."""
    app = ScopeApp()
    async with run_server(app) as running:
        raw, head = await answered(running.port, HANDSHAKE)
        try:
            assert head.startswith(b"HTTP/1.1 101 ")
            gc.collect()
            kept = [item for item in gc.get_objects() if isinstance(item, Request) and "room%201" in item.path]
        finally:
            raw.close()
    assert kept == []


# --- direct writes -------------------------------------------------------------------------------


async def test_the_frames_of_one_turn_leave_in_one_write() -> None:
    """Frames written directly in one event-loop turn reach the socket in one write, each its own message."""
    app = EchoApp()
    async with run_server(app) as running, echo_client(running) as client:
        session = await app.accepted()
        spy = TransportSpy(session.writer)
        write(session, "one", "two", "three")
        assert await received(client, 3) == ["one", "two", "three"]
        assert [data for _, data in spy.writes] == [b"".join(text_frame(t) for t in (b"one", b"two", b"three"))]


async def test_with_batch_the_frames_of_one_turn_are_one_message() -> None:
    """A ``batch`` member gets the frames of one turn in one WebSocket message, one per line."""
    app = EchoApp()
    async with run_server(app) as running, echo_client(running) as client:
        session = await app.accepted()
        session.writer.batch = True
        write(session, "one", "two", "three")
        assert await received(client, 1) == ["one\ntwo\nthree"]


@pytest.mark.parametrize(("delay", "writes"), [(0.0, 2), (0.3, 1)])
async def test_write_delay_holds_frames_that_long_and_sends_later_ones_with_them(delay: float, writes: int) -> None:
    """Without a write delay, frames of two turns leave in two writes; with one, in one write, no sooner than it."""
    app = EchoApp()
    async with run_server(app) as running, echo_client(running) as client:
        session = await app.accepted()
        session.writer.write_delay = delay
        spy = TransportSpy(session.writer)
        written = session.writer.loop.time()
        write(session, "one")
        await anyio.lowlevel.checkpoint()  # the next frame is written in a later event-loop turn
        write(session, "two")
        assert await received(client, 2) == ["one", "two"]
        assert len(spy.writes) == writes
        assert spy.writes[0][0] - written >= delay - 0.01  # a timer may fire up to a clock tick early


async def test_with_compression_direct_writes_are_compressed_frames() -> None:
    """With permessage-deflate negotiated, direct writes go out compressed, and a client reads them."""
    app = EchoApp()
    async with run_server(app, ws_per_message_deflate=True) as running, echo_client(running) as client:
        session = await app.accepted()
        spy = TransportSpy(session.writer)
        write(session, "y" * 1000)
        assert await received(client, 1) == ["y" * 1000]
        [(_, data)] = spy.writes
        assert data[0] & 0x40, "RSV1 not set: not a compressed frame"
        assert len(data) < 100


# --- closes ------------------------------------------------------------------------------------------


async def test_frames_written_before_a_close_leave_before_it() -> None:
    """``direct_close`` sends what this turn wrote first, then the close frame; the app is told at once."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port)
        try:
            session = await app.accepted()
            write(session, "last words")
            session.writer.direct_close(4000, "bye")
            assert await ended(session) == (4000, "bye")
            await raw.send(close_frame(4000))
            frames = await raw.frames_to_end()
        finally:
            raw.close()
    assert frames == [(TEXT, b"last words"), (CLOSE, struct.pack("!H", 4000) + b"bye")]


async def test_nothing_is_written_after_the_close_reply() -> None:
    """A frame written after the peer's close (its echo, here) never follows the close reply on the wire."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port, rcvbuf=SMALL_RCVBUF)
        try:
            session = await app.accepted()
            write_big(session)  # so the close reply waits in the transport's buffer, and the echo could follow it
            await raw.send(client_frame(TEXT, b"after") + close_frame(1000))
            assert await ended(session) == (1000, "")
            frames = await raw.frames_to_end()
        finally:
            raw.close()
    assert [(opcode, len(payload)) for opcode, payload in frames] == [(TEXT, BIG), (CLOSE, 2)]
    assert close_code(frames[1][1]) == 1000


async def test_with_compression_a_frame_written_after_the_peers_close_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With permessage-deflate, a frame written after the peer's close is dropped, not an error in the app."""
    app = EchoApp()
    async with run_server(app, ws_per_message_deflate=True) as running:
        raw = await RawSocket.upgraded(running.port, extensions="permessage-deflate")
        try:
            session = await app.accepted()
            await raw.send(client_frame(TEXT, b"after") + close_frame(1000))
            assert await ended(session) == (1000, "")
            frames = await raw.frames_to_end()
        finally:
            raw.close()
    assert frames == [(CLOSE, struct.pack("!H", 1000))]
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("closer", ["websocket.close", "direct_close"])
async def test_a_close_never_waits_for_a_full_buffer(closer: str) -> None:
    """With the socket full, a close returns at once and the app is told; the socket is reset, not kept."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port, rcvbuf=SMALL_RCVBUF)
        try:
            session = await app.accepted()
            session.writer.close_timeout = SHORT
            spy = TransportSpy(session.writer)
            write_big(session)
            with anyio.fail_after(WAIT):
                if closer == "direct_close":
                    session.writer.direct_close(1000, "bye")
                else:
                    await session.send({"type": "websocket.close", "code": 1000, "reason": "bye"})
            assert await ended(session) == (1000, "bye")
            await spy.wait_aborted()
            assert await raw.reset_seen()
        finally:
            raw.close()


async def test_a_socket_that_takes_nothing_for_stall_timeout_is_closed_with_1013() -> None:
    """A peer that reads nothing for ``stall_timeout`` seconds is closed with 1013, then reset."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port, rcvbuf=SMALL_RCVBUF)
        try:
            session = await app.accepted()
            session.writer.stall_timeout = session.writer.close_timeout = SHORT
            spy = TransportSpy(session.writer)
            write_big(session)
            code, reason = await ended(session)
            assert (code, reason) == (1013, "slow consumer: the socket took nothing for too long")
            await spy.wait_aborted()
            assert await raw.reset_seen()
        finally:
            raw.close()


async def test_a_stall_calls_on_stall_instead_when_set() -> None:
    """With ``on_stall`` set, a stall calls it and the app closes as it decides."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port, rcvbuf=SMALL_RCVBUF)
        try:
            session = await app.accepted()
            session.writer.stall_timeout = SHORT
            session.writer.on_stall = closing_hook(session.writer)
            write_big(session)
            assert await ended(session) == (4001, "too slow for this app")
        finally:
            raw.close()


async def test_text_that_is_not_utf8_closes_with_1007_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A text frame that is not UTF-8 gets a 1007 close, the app is told, and nothing is logged with a traceback."""
    app = EchoApp()
    with caplog.at_level(logging.DEBUG):
        async with run_server(app) as running:
            raw = await RawSocket.upgraded(running.port)
            try:
                session = await app.accepted()
                await raw.send(client_frame(TEXT, b"caf\xe9"))
                frames = await raw.frames_to_end()
                assert await ended(session) == (1007, "text frames must be UTF-8")
            finally:
                raw.close()
    assert [(opcode, close_code(payload)) for opcode, payload in frames] == [(CLOSE, 1007)]
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_shutdown_closes_every_connection_with_1012() -> None:
    """When uvicorn shuts down (SIGTERM), clients get a 1012 close and the app is told."""
    app = EchoApp()
    async with run_server(app) as running, echo_client(running) as client:
        session = await app.accepted()
        running.shut_down()
        with pytest.raises(ConnectionClosed), anyio.fail_after(WAIT):
            await client.recv()
        assert client.close_code == 1012
        assert await ended(session) == (1012, "")


# --- no reference cycles ---------------------------------------------------------------------------


def holders(ref: weakref.ref[ChatWebSocketProtocol]) -> list[str]:
    """What still refers to the object (for a failure message): bound methods by name, dicts by their keys."""
    found = []
    for holder in gc.get_referrers(ref()):
        if isinstance(holder, types.MethodType):
            found.append(f"method {holder.__func__.__qualname__}")
        elif isinstance(holder, dict):
            found.append(f"dict with keys {sorted(map(str, holder))[:6]}")
        else:
            found.append(type(holder).__name__)
    return found


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("ending", ["close frame", "reset", "stall", "stall with on_stall"])
async def test_a_closed_connection_is_freed_without_the_collector(ending: str) -> None:
    """Once the connection is gone and the app returned, its protocol (and the frames it held) is freed at once."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port, rcvbuf=SMALL_RCVBUF)
        try:
            session = await app.accepted()
            protocol = weakref.ref(session.writer)
            freed = anyio.Event()
            weakref.finalize(session.writer, freed.set)
            if ending == "close frame":
                await raw.send(close_frame(1000))
            elif ending == "reset":
                raw.reset()
            else:
                session.writer.stall_timeout = session.writer.close_timeout = SHORT
                if ending == "stall with on_stall":
                    session.writer.on_stall = closing_hook(session.writer)
                write_big(session)
            app_done = session.ended
            del session
            with anyio.fail_after(WAIT):
                await app_done.wait()
            try:
                with anyio.fail_after(WAIT):
                    await freed.wait()
            except TimeoutError:
                raise AssertionError(f"the protocol is still alive, held by {holders(protocol)}") from None
        finally:
            raw.close()
