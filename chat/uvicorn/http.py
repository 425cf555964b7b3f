"""``ChatHttpProtocol``: uvicorn's httptools protocol with a deadline and a size limit for each request head,
handing a WebSocket upgrade over as httptools parsed it."""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any, cast

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chat.uvicorn.handshake import accept_key
from chat.uvicorn.websocket import ChatWebSocketProtocol

MAX_REQUEST_HEAD = 32768
"""Bytes a request head may take while incomplete (uvicorn's httptools protocol sets no limit of its own).

Counted per read: a head that completes within the read that brings it (up to 256 KiB) is not refused.
"""

RELIES_ON_METHODS = (
    "connection_lost",
    "connection_made",
    "data_received",
    "handle_websocket_upgrade",
    "on_headers_complete",
    "on_message_begin",
)
"""uvicorn's methods that ``ChatHttpProtocol`` overrides (checked by ``tests/test_uvicorn_contract.py``)."""
RELIES_ON_ATTRIBUTES = (
    "app_state",
    "client",
    "config",
    "connections",
    "headers",
    "logger",
    "loop",
    "parser",
    "scheme",
    "scope",
    "server",
    "server_state",
    "transport",
    "url",
    "ws_protocol_class",
)
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

    def handle_websocket_upgrade(self) -> None:
        """Hand a chat WebSocket protocol the request as httptools parsed it, when it can accept it as it is;
        otherwise as uvicorn does (the request's bytes, parsed again by ``websockets``)."""
        protocol_class = self.ws_protocol_class
        key = None
        # At DEBUG, websockets logs the request and the response line by line: it has to see them.
        chat_protocol = isinstance(protocol_class, type) and issubclass(protocol_class, ChatWebSocketProtocol)
        if chat_protocol and not self.logger.isEnabledFor(logging.DEBUG):
            key = accept_key(self.scope["method"], self.url, self.headers, self.config.ws_per_message_deflate)
        if key is None or protocol_class is None:
            super().handle_websocket_upgrade()
            self._handed_over()
            return
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", prefix)
        self.connections.discard(self)
        protocol = cast(
            ChatWebSocketProtocol,
            protocol_class(config=self.config, server_state=self.server_state, app_state=self.app_state),  # type: ignore[call-arg]
        )
        self.transport.set_protocol(protocol)
        peers = (self.server, self.client)
        protocol.upgraded(self.transport, peers, self.scheme or "http", self.url, self.headers, key)
        self._handed_over()

    def _handed_over(self) -> None:
        """The connection is the WebSocket protocol's now: let go of the parser, which refers back to this object, so
        that it is freed at once rather than left for the collector (~20 objects a handshake)."""
        self.parser = None  # type: ignore[assignment]

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
