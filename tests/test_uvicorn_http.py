"""``ChatHttpProtocol`` under a real uvicorn: a deadline and a size limit for each request head."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import anyio
import pytest

from chat.uvicorn.http import MAX_REQUEST_HEAD, ChatHttpProtocol
from tests.test_uvicorn_contract import (
    WAIT,
    RawSocket,
    accept_and_wait,
    anyio_backend,  # noqa: F401 - the fixture: every test on both loops
    run_server,
)
from tests.test_uvicorn_websocket import HANDSHAKE

pytestmark = pytest.mark.anyio

HEAD_DEADLINE = 0.2


class ImpatientHttp(ChatHttpProtocol):
    """``ChatHttpProtocol`` with a short deadline for request heads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, handshake_timeout=HEAD_DEADLINE, **kwargs)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with 200 ``hello``."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def answer(port: int, request: bytes) -> bytes:
    """Everything the server sends for ``request`` until it closes the connection."""
    raw = await RawSocket.connect(port)
    try:
        await raw.send(request)
        return await raw.read_to_end()
    finally:
        raw.close()


async def test_a_request_head_in_time_and_in_size_is_served() -> None:
    """A request whose head comes whole and in time is answered as usual."""
    async with run_server(hello, http=ImpatientHttp) as running:
        response = await answer(running.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half a head"])
async def test_a_request_head_that_does_not_come_in_time_gets_408(sent: bytes) -> None:
    """A client that sends nothing, or half a head, within the deadline gets a 408 and is disconnected."""
    async with run_server(hello, http=ImpatientHttp) as running:
        response = await answer(running.port, sent)
    assert response == b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


async def test_a_request_head_that_never_ends_gets_431() -> None:
    """A request head still not complete after ``MAX_REQUEST_HEAD`` bytes gets a 431 and is disconnected."""
    filler = b"x" * MAX_REQUEST_HEAD
    async with run_server(hello) as running:
        response = await answer(running.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + filler)
    assert response == b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class WatchedHttp(ChatHttpProtocol):
    """``ChatHttpProtocol`` that tells when an instance is freed."""

    freed: anyio.Event

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        weakref.finalize(self, WatchedHttp.freed.set)


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("extra", ["", "Content-Length: 0\r\n"], ids=["parsed once", "parsed again by websockets"])
async def test_once_upgraded_the_http_protocol_is_freed_without_the_collector(extra: str) -> None:
    """The HTTP protocol that handed a connection over to the WebSocket protocol is freed at once (no cycle)."""
    WatchedHttp.freed = anyio.Event()
    async with run_server(accept_and_wait, http=WatchedHttp) as running:
        raw = await RawSocket.connect(running.port)
        try:
            await raw.send(HANDSHAKE.encode() + extra.encode() + b"\r\n")
            assert (await raw.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
            with anyio.fail_after(WAIT):
                await WatchedHttp.freed.wait()
        finally:
            raw.close()
