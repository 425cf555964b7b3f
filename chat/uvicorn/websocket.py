"""``ChatWebSocketProtocol``: uvicorn's sans-I/O websockets protocol with these changes.

- the handshake httptools parsed: ``ChatHttpProtocol`` hands over an upgrade request that
  ``chat.uvicorn.handshake`` finds acceptable as it is, and it is answered without ``websockets``
  parsing it again (nor keeping it for the connection's life); any other goes uvicorn's way;
- direct writes: it offers the app the ``chat.direct`` ASGI extension, through which whole frames,
  framed once per broadcast, go into the socket's buffer without an await; everything written in
  one event-loop turn (or, with a ``write_delay``, within that many seconds of the first) leaves in
  one write (one system call instead of one per frame), and for a member that joined with
  ``batch=1`` in one WebSocket message;
- lighter per-connection state: every attribute in a slot, a plain list for the app's receive queue
  (and no coroutine of ``receive``'s own waiting on it), a flag for ``writable``
  (``chat.uvicorn.standins``), and the handshake's request and response dropped once accepted;
- no stuck sockets: uvicorn's own close waits for a send buffer that never drains when the peer
  stopped reading, and its keepalive then closes the transport gracefully, which waits for the same
  buffer. Here a close never waits, a socket that takes nothing for ``stall_timeout`` seconds is
  closed (by the app's ``on_stall``, else with 1013), and a connection still open ``close_timeout``
  seconds after its close (or after the app finished with it) is reset;
- nothing after a close frame, whoever closed: frames still waiting for this turn's write when the
  peer's close is answered are dropped;
- freed without the garbage collector: once the connection is lost and the app returned, nothing
  refers back to the protocol (no timer, no scope entry, no hook), so it and the frames it held go
  at once, not at the next full collection (rare under ``scripts/serve``'s tuned collector);
- a text frame that is not UTF-8 closes with 1007 without a traceback in the log.

It relies on uvicorn's private attributes and methods: ``RELIES_ON_METHODS`` and
``RELIES_ON_ATTRIBUTES`` name every one (``tests/test_uvicorn_contract.py`` checks them against the
uvicorn installed, and that the lists are complete), and setup.cfg caps uvicorn at the newest minor
tested (``scripts/check-upstream``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from asyncio import TimerHandle, Transport
from collections.abc import Callable, Coroutine
from contextvars import copy_context
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import is_valid_header_value
from websockets.exceptions import InvalidHeaderValue
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol

from chat.connection import DIRECT_EXTENSION, STALLED, FrameBatch
from chat.exceptions import SlowConsumer
from chat.frames import text_frame
from chat.uvicorn.flusher import flusher_for
from chat.uvicorn.standins import Flag, Inbox

RELIES_ON_METHODS = (
    "connection_lost",
    "handle_connect",
    "handle_parser_exception",
    "keepalive_timeout",
    "on_task_complete",
    "pause_writing",
    "receive",
    "resume_writing",
    "run_asgi",
    "send",
    "send_receive_event_to_app",
    "shutdown",
    "start_keepalive",
)
"""uvicorn's methods that ``ChatWebSocketProtocol`` overrides or calls (``tests/test_uvicorn_contract.py`` checks)."""
RELIES_ON_ATTRIBUTES = (
    "app_state",
    "asgi_version",
    "client",
    "close_sent",
    "close_timeout",
    "close_timer",
    "conn",
    "connections",
    "curr_msg_data_type",
    "default_headers",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "initial_response",
    "logger",
    "loop",
    "queue",
    "read_paused",
    "request",
    "response",
    "root_path",
    "scheme",
    "scope",
    "server",
    "tasks",
    "transport",
    "writable",
)
"""uvicorn's per-connection attributes that ``ChatWebSocketProtocol`` reads or replaces (checked the same way)."""
RELIES_ON_WEBSOCKETS = (
    "Protocol.parse",
    "ServerProtocol.accept_called",
    "ServerProtocol.parser",
    "ServerProtocol.state",
)
"""What a handshake httptools parsed uses of ``websockets``' server protocol beyond its documented API (checked the
same way): where its parser is, the generator that parses frames, and the two attributes ``accept`` would set."""

Peers = tuple[tuple[str, int | None] | None, tuple[str, int] | None]
"""The server's and the client's address, as uvicorn's protocols keep them."""
SWITCHING = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
"""How ``websockets`` begins its 101 response (``tests/test_uvicorn_websocket.py`` compares the whole)."""
SHUTDOWN_GRACE = 3.0
"""Seconds connections get after the 1012 of a shutdown before they are reset."""
UVICORN_STATE = (
    "app",
    "app_state",
    "asgi_version",
    "client",
    "close_sent",
    "close_timeout",
    "close_timer",
    "config",
    "conn",
    "connections",
    "curr_msg_data_type",
    "default_headers",
    "disconnected",
    "frames",
    "handshake_complete",
    "handshake_initiated",
    "initial_response",
    "last_ping_rtt",
    "logger",
    "loop",
    "pending_ping_payload",
    "ping_interval",
    "ping_sent_at",
    "ping_timeout",
    "ping_timer",
    "pong_timer",
    "queue",
    "read_paused",
    "request",
    "response",
    "root_path",
    "scheme",
    "scope",
    "server",
    "tasks",
    "transport",
    "writable",
)
"""Every attribute uvicorn's protocol sets, kept in slots: over 30 attributes, an instance dict is not shared and
takes ~1.5 KiB per connection (``tests/test_uvicorn_contract.py`` checks that the list is complete)."""


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol with direct writes, releasing sockets whose peer stopped reading."""

    __slots__ = (
        *UVICORN_STATE,
        "_abort_timer",
        "_accept_key",
        "_flusher",
        "_pending",
        "_pending_size",
        "_stall_timer",
        "batch",
        "on_stall",
        "stall_timeout",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter stand-ins for uvicorn's per-connection queue and event (memory per idle connection).
        inbox = Inbox()
        inbox.drained = self._drained  # cleared when the connection is lost
        self.queue = inbox  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self._flusher = flusher_for(self.loop)
        self.stall_timeout = 30.0
        self.batch = False
        self.on_stall: Callable[[], None] | None = None
        """Called when the socket took nothing for ``stall_timeout`` seconds; the app then closes (``direct_close``)."""
        self._pending: list[Any] | None = None  # this turn's frames: text with ``batch``, else WebSocket bytes
        self._pending_size = 0
        self._stall_timer: TimerHandle | None = None
        self._abort_timer: TimerHandle | None = None
        self._accept_key: str | None = None  # the Sec-WebSocket-Accept value of a handshake httptools parsed

    # --- the handshake httptools parsed -----------------------------------------------------------

    def upgraded(
        self, transport: Transport, peers: Peers, scheme: str, url: bytes, headers: list[tuple[bytes, bytes]], key: str
    ) -> None:
        """Take over a connection whose upgrade request httptools parsed and ``handshake.accept_key`` found acceptable
        (``peers``: the server's and the client's address; ``key``: the ``Sec-WebSocket-Accept`` value).

        As ``connection_made`` and ``handle_connect`` would once ``websockets`` had parsed the request
        again, without that parse: the scope has httptools' headers, and the frames that follow go to
        ``websockets``' frame parser, whose frame then holds no request.
        """
        self.connections.add(self)
        self.transport = transport
        self.server, self.client = peers
        self.scheme = "wss" if scheme == "https" else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)
        self.conn.parser = Protocol.parse(self.conn)  # what ServerProtocol.parse goes on with after a request
        next(self.conn.parser)
        self.conn.accept_called = True  # as accept() would have: a refusal is logged as "connection rejected"
        self.request = self.response = None  # type: ignore[assignment]
        self._accept_key = key
        self.handshake_initiated = True
        raw_path, _, query_string = url.partition(b"?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path.decode("ascii")),
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, DIRECT_EXTENSION: {"writer": self}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        context = copy_context()  # one for the task and its done callback, not a copy each
        task = self.loop.create_task(self.run_asgi(), context=context)
        task.add_done_callback(self.on_task_complete, context=context)
        self.tasks.add(task)

    # --- the chat.direct extension ----------------------------------------------------------------

    def handle_connect(self, event: Request) -> None:
        """As uvicorn's, offering the app direct writes once the handshake can succeed."""
        super().handle_connect(event)
        if not self.close_sent:  # uvicorn refused the handshake, and made no scope, when it set close_sent
            self.scope["extensions"][DIRECT_EXTENSION] = {"writer": self}

    @property
    def write_delay(self) -> float:
        """Seconds a frame may wait for others to leave in the same write (0: the end of this loop turn)."""
        return self._flusher.delay

    @write_delay.setter
    def write_delay(self, seconds: float) -> None:
        if seconds != self._flusher.delay:
            self.flush()  # what waits for the old flusher leaves now
            self._flusher = flusher_for(self.loop, seconds)

    def direct_write(self, frame: str, wire: bytes) -> None:
        """Send a text frame in the next flush (``write_delay``); ``wire`` is used as is unless an extension is on."""
        if self.conn.close_sent is not None or self.disconnected:  # a close frame went out, whoever closed
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = []
            self._flusher.add(self)
        if self.batch:  # the turn's frames leave as one message, joined in _flush
            pending.append(frame)
            self._pending_size += len(frame)
            return
        if self.conn.extensions:
            wire = self._encode(frame)
        pending.append(wire)
        self._pending_size += len(wire)

    def direct_write_many(self, frames: FrameBatch) -> None:
        """Send several text frames in the next flush: one message under ``batch``, else one each (their ``wire``)."""
        if self.batch:
            self.direct_write(frames.text, frames.wire)
        elif self.conn.extensions:
            for frame in frames.texts:
                self.direct_write(frame, b"")  # encoded again, with the extension
        else:
            self.direct_write("", frames.wire)  # without batch or an extension only the wire bytes are sent

    def direct_buffered(self) -> int:
        """Bytes written but not yet taken by the peer (this turn's and the transport's)."""
        return self._pending_size + self.transport.get_write_buffer_size()

    def direct_close(self, code: int, reason: str) -> None:
        """Close after what was written, without waiting; tell the app at once."""
        self.flush()
        if self.close_sent or self.conn.close_sent is not None or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self._abort)

    def flush(self) -> None:
        """Write this turn's frames in one write; drop them once a close frame left (the reply to a peer's close)."""
        pending, self._pending = self._pending, None
        self._pending_size = 0
        if not pending or self.disconnected or self.conn.close_sent is not None:
            return
        if self.batch:
            self.transport.write(self._encode("\n".join(pending)))
        else:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _encode(self, text: str) -> bytes:
        if self.conn.extensions:
            self.conn.send_text(text.encode())
            return b"".join(self.conn.data_to_send())
        return text_frame(text.encode())

    # --- never hold a stuck socket ----------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """As uvicorn's, except that a close comes after direct writes and never waits for the buffer."""
        key = self._accept_key
        if key is not None and message["type"] == "websocket.accept" and not self.handshake_complete:
            await self._accept(message, key)
            return
        closing = message["type"] == "websocket.close" and self.handshake_complete and not self.close_sent
        if closing:
            self.flush()
            self.writable.set()
        await super().send(message)
        if message["type"] == "websocket.accept":
            # The handshake is done: its request and response (headers and all) are not needed again.
            self.request = self.response = None  # type: ignore[assignment]
        if closing:
            self._abort_later(self.close_timeout + 1.0)

    async def _accept(self, message: Any, key: str) -> None:
        """uvicorn's accept, for a handshake httptools parsed: the response ``websockets`` would build, written and
        logged the same way, without building it from ``websockets``' headers."""
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected
        if self.handshake_complete:  # answered otherwise meanwhile: uvicorn's send() says what is wrong
            await super().send(message)
            return
        if self.logger.isEnabledFor(logging.INFO):
            client, path = get_client_addr(self.scope), get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', client, path)
        own = [*self.default_headers, *message.get("headers", [])]
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in own]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        for name, value in headers:
            if not is_valid_header_value(str(value)):
                raise InvalidHeaderValue(name, value)
        if self.transport.is_closing():
            return
        self._accept_key = None
        self.handshake_complete = True
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.transport.write(f"{SWITCHING}Sec-WebSocket-Accept: {key}\r\n{lines}\r\n".encode())
        self.conn.state = OPEN
        self.conn.logger.info("connection open")
        self.start_keepalive()

    def pause_writing(self) -> None:
        """The peer is not keeping up: give it ``stall_timeout`` seconds to take something."""
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        if not self.handshake_complete or self.initial_response is not None:
            self._abort()
        elif self.on_stall is not None:
            self.on_stall()
        else:
            self.direct_close(SlowConsumer.close_code, STALLED)

    async def run_asgi(self) -> None:
        """Run the app; once it is done with the connection, give the close at most ``close_timeout``."""
        try:
            await super().run_asgi()
        finally:
            # The app is done with the scope: its entry pointing back here would keep this object for the collector.
            self.scope["extensions"].pop(DIRECT_EXTENSION, None)
        self.flush()
        self._abort_later(self.close_timeout + 1.0)

    def receive(self) -> Coroutine[Any, Any, Any]:
        """As uvicorn's, without a coroutine of its own kept awaiting: the inbox resumes reading once drained."""
        return self.queue.get()

    def _drained(self) -> None:
        """The app took every event: read again, if reading was paused (what uvicorn's ``receive`` does)."""
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def keepalive_timeout(self) -> None:
        """The peer did not answer a ping in time: fail the connection and do not wait for its buffer."""
        self.flush()
        super().keepalive_timeout()
        self._abort_later(1.0)

    def shutdown(self) -> None:
        """Close with 1012 as uvicorn does, and reset what is still open after a short grace."""
        self.flush()
        super().shutdown()
        self._abort_later(SHUTDOWN_GRACE)

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn's, letting go of what would keep this object alive: timers, frames, the app's hook."""
        for timer in (self._stall_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._stall_timer = self._abort_timer = None
        self._pending = None
        self.on_stall = None
        cast(Inbox, self.queue).drained = None
        super().connection_lost(exc)

    def _abort_later(self, delay: float) -> None:
        """Reset the connection in ``delay`` seconds unless it is gone by then (the earliest deadline stands)."""
        if self.disconnected:
            return
        when = self.loop.time() + delay
        if self._abort_timer is not None:
            if self._abort_timer.when() <= when:
                return
            self._abort_timer.cancel()
        self._abort_timer = self.loop.call_at(when, self._abort)

    def _abort(self) -> None:
        if self.disconnected or self.transport is None:
            return
        # Linger 0: the kernel resets the connection and drops what the peer never read, instead of
        # keeping the socket and its send buffer to deliver a FIN behind that data.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    # --- bad input ----------------------------------------------------------------------------------

    def send_receive_event_to_app(self) -> None:
        """As uvicorn's, except that a text message that is not UTF-8 closes with 1007 without a traceback."""
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(CloseCode.INVALID_DATA, "text frames must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()
