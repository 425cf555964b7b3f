"""Running under uvicorn: the server process, and the websocket protocol it serves with.

``ChatWebSocketProtocol`` is uvicorn's sans-I/O websockets protocol with these changes:

- direct writes: it offers the app the ``chat.direct`` ASGI extension, through which whole frames,
  framed once per broadcast, go into the socket's buffer without an await; everything written in
  one event-loop turn (or, with a ``write_delay``, within that many seconds of the first) leaves in
  one write (one system call instead of one per frame), and for a member that joined with
  ``batch=1`` in one WebSocket message;
- lighter per-connection state: a plain list for the app's receive queue, a flag for ``writable``,
  and the handshake's request and response dropped once accepted;
- no stuck sockets: uvicorn's own close waits for a send buffer that never drains when the peer
  stopped reading, and its keepalive then closes the transport gracefully, which waits for the same
  buffer. Here a close never waits, a socket that takes nothing for ``stall_timeout`` seconds is
  closed with 1013, and a connection still open ``close_timeout`` seconds after its close (or after
  the app finished with it) is reset;
- a text frame that is not UTF-8 closes with 1007 without a traceback in the log.

``ChatHttpProtocol`` is uvicorn's httptools protocol with a deadline and a size limit for each
request head, so that half-open handshakes (slowloris) cannot hold sockets and memory. Every log
handler redacts tokens (``chat.logs.RedactSecrets``): uvicorn prints request lines, query and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import gc
import os
import shutil
import socket
import struct
import tempfile
import weakref
from asyncio import TimerHandle
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from chat.connection import DIRECT_EXTENSION, SLOW_CONSUMER
from chat.exceptions import ConfigError
from chat.frames import text_frame
from chat.settings import Settings

SHUTDOWN_GRACE = 3.0
GC_YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (Python's default is 700; see ``serve_app``)."""
MAX_REQUEST_HEAD = 32768
"""Bytes of request line and headers at most (uvicorn's httptools protocol sets no limit of its own)."""


class _Inbox:
    """The app's receive queue: one consumer, no put waiters; a fraction of an ``asyncio.Queue``'s memory."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """uvicorn's ``writable`` event without the cost of an ``asyncio.Event`` per connection."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class _Flusher:
    """Flushes every socket written to in this event-loop turn (or within ``delay`` seconds of the first write).

    One callback per turn (or per delay), not one per socket.
    """

    __slots__ = ("_dirty", "_scheduled", "delay")  # no reference to the loop: it keys the flusher weakly

    def __init__(self, delay: float = 0.0) -> None:
        self._dirty: list[ChatWebSocketProtocol] = []
        self._scheduled = False
        self.delay = delay

    def add(self, protocol: ChatWebSocketProtocol) -> None:
        self._dirty.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            if self.delay:
                protocol.loop.call_later(self.delay, self._run)
            else:
                protocol.loop.call_soon(self._run)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for protocol in dirty:
            protocol._flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Flusher]] = weakref.WeakKeyDictionary()


def _flusher(loop: asyncio.AbstractEventLoop, delay: float = 0.0) -> _Flusher:
    """The loop's flusher for this write delay (one per serving loop and delay; gone with the loop)."""
    by_delay = _flushers.get(loop)
    if by_delay is None:
        by_delay = _flushers[loop] = {}
    flusher = by_delay.get(delay)
    if flusher is None:
        flusher = by_delay[delay] = _Flusher(delay)
    return flusher


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol with direct writes, releasing sockets whose peer stopped reading."""

    stall_timeout = 30.0
    batch = False
    _pending: list[Any] | None = None  # this turn's frames: text with ``batch``, else WebSocket bytes
    _pending_size = 0
    _stall_timer: TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter stand-ins for uvicorn's per-connection queue and event (memory per idle connection).
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self._flusher = _flusher(self.loop)

    # --- the chat.direct extension ----------------------------------------------------------------

    def handle_connect(self, event: Request) -> None:
        """As uvicorn's, offering the app direct writes once the handshake can succeed."""
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:
            scope["extensions"][DIRECT_EXTENSION] = {"writer": self}

    @property
    def write_delay(self) -> float:
        """Seconds a frame may wait for others to leave in the same write (0: the end of this loop turn)."""
        return self._flusher.delay

    @write_delay.setter
    def write_delay(self, seconds: float) -> None:
        if seconds != self._flusher.delay:
            self._flush()  # what waits for the old flusher leaves now
            self._flusher = _flusher(self.loop, seconds)

    def direct_write(self, frame: str, wire: bytes) -> None:
        """Send a text frame in the next flush (``write_delay``); ``wire`` is used as is unless an extension is on."""
        if self.close_sent or self.disconnected:
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

    def direct_buffered(self) -> int:
        """Bytes written but not yet taken by the peer (this turn's and the transport's)."""
        return self._pending_size + self.transport.get_write_buffer_size()

    def direct_close(self, code: int, reason: str) -> None:
        """Close after what was written, without waiting; tell the app at once."""
        self._flush()
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self._abort)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        self._pending_size = 0
        if self.disconnected or not pending:
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
        closing = message["type"] == "websocket.close" and self.handshake_complete and not self.close_sent
        if closing:
            self._flush()
            self.writable.set()
        await super().send(message)
        if message["type"] == "websocket.accept":
            # The handshake is done: its request and response (headers and all) are not needed again.
            self.request = self.response = None  # type: ignore[assignment]
        if closing:
            self._abort_later(self.close_timeout + 1.0)

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
            return
        self.direct_close(SLOW_CONSUMER, "slow consumer: the socket took nothing for too long")

    async def run_asgi(self) -> None:
        """Run the app; once it is done with the connection, give the close at most ``close_timeout``."""
        await super().run_asgi()
        self._flush()
        self._abort_later(self.close_timeout + 1.0)

    def keepalive_timeout(self) -> None:
        """The peer did not answer a ping in time: fail the connection and do not wait for its buffer."""
        self._flush()
        super().keepalive_timeout()
        self._abort_later(1.0)

    def shutdown(self) -> None:
        """Close with 1012 as uvicorn does, and reset what is still open after a short grace."""
        self._flush()
        super().shutdown()
        self._abort_later(SHUTDOWN_GRACE)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._pending = None
        super().connection_lost(exc)

    def _abort_later(self, delay: float) -> None:
        self.loop.call_later(delay, self._abort)

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
                self.conn.send_close(1007, "text frames must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


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


def serve_app() -> Starlette:
    """The app as ``python -m chat`` serves it (each worker builds its own), with the collector tuned.

    A server holds thousands of long-lived connections of ~100 objects each. With Python's default
    young threshold, frames and futures in flight are caught alive by young collections, promoted,
    and soon trigger full collections that walk every connection: 50-120 ms pauses every few
    seconds at 2000 busy members. Ten thousand allocations between young collections let them die
    young first; what was imported before serving is frozen out of collections altogether.
    """
    from chat.app import create_app  # not before run() has set up the metrics directory

    app = create_app()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return app


def run(settings: Settings) -> None:
    """Serve the app with uvicorn until SIGTERM or Ctrl-C; workers rebuild ``settings`` from ``CHAT_*``."""
    if settings.workers > 1 and settings.backend.startswith("memory:"):
        raise ConfigError("--workers above 1 needs a shared backend (redis://...): with memory:// rooms would split")
    own_metrics_dir = None
    if settings.workers > 1 and settings.metrics and not settings.metrics_dir:
        own_metrics_dir = tempfile.mkdtemp(prefix="chat-metrics-")
        settings = settings.replace(metrics_dir=own_metrics_dir)
    if settings.metrics_dir:
        prepare_metrics_dir(settings.metrics_dir)
    os.environ.update(settings.to_env())
    try:
        uvicorn.run(
            "chat.server:serve_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=functools.partial(ChatHttpProtocol, handshake_timeout=settings.handshake_timeout),  # type: ignore[arg-type]
            ws="chat.server:ChatWebSocketProtocol",
            ws_max_size=settings.max_frame,
            ws_ping_interval=settings.ws_ping_interval or None,
            ws_ping_timeout=settings.ws_ping_timeout or None,
            ws_per_message_deflate=settings.ws_per_message_deflate,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE) + 2,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            lifespan="on",
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def prepare_metrics_dir(path: str) -> None:
    """Make the workers' shared metrics directory, empty of an earlier run's files, and point prometheus-client at it.

    prometheus-client chooses its multiprocess mode from ``PROMETHEUS_MULTIPROC_DIR`` when it is
    first imported, so this runs before any worker starts.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the ``chat`` loggers printed the same way, and secrets redacted from every line."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["chat"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config.setdefault("filters", {})["redact"] = {"()": "chat.logs.RedactSecrets"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    return config
