"""``ChatHttpProtocol``: uvicorn's httptools protocol with a deadline and a size limit for each request head."""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_REQUEST_HEAD = 32768
"""Bytes a request head may take while incomplete (uvicorn's httptools protocol sets no limit of its own).

Counted per read: a head that completes within the read that brings it (up to 256 KiB) is not refused.
"""

RELIES_ON_METHODS = ("connection_lost", "connection_made", "data_received", "on_headers_complete", "on_message_begin")
"""uvicorn's methods that ``ChatHttpProtocol`` overrides (checked by ``tests/test_uvicorn_contract.py``)."""
RELIES_ON_ATTRIBUTES = ("loop", "transport")
"""uvicorn's per-connection attributes that ``ChatHttpProtocol`` uses (checked the same way)."""


class ChatHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with ``handshake_timeout`` seconds and ``MAX_REQUEST_HEAD`` bytes per request head.

    A client that connects and then sends its request line and headers slowly, or endlessly, gets
    a 408 or 431 and is disconnected; uvicorn itself waits for a first request forever.
    """

    _head_timer: TimerHandle | None = None
    _head_size = 0

    def __init__(self, *args: Any, handshake_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_timeout = handshake_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None:
            self._head_size += len(data)
            if self._head_size > MAX_REQUEST_HEAD:
                self._refuse_head(b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._expect_head()

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        if self._head_timer is None:
            self._head_size = 0
            self._head_timer = self.loop.call_later(self.handshake_timeout, self._refuse_head, b"408 Request Timeout")

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse_head(self, status: bytes) -> None:
        self._head_arrived()
        if self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()
