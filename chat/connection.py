"""One member's outbound side: a bounded buffer of frames, how it reaches the socket, the close policy.

Broadcasts hand frames over without awaiting (``send``, ``deliver``), so a slow member never delays
anyone else. Two ways to the socket, one class each behind ``Connection``'s interface; the endpoint
picks one:

- ``DirectConnection``: under chat's own protocol (``chat.uvicorn``), frames go straight into the
  socket's write buffer, already framed (a broadcast is framed once for everyone), and leave in one
  write per event-loop turn (or per ``write_delay`` seconds);
- ``QueuedConnection``: under any other ASGI server, a writer task (``run``) awaits ``send_text``
  frame by frame.

A member that joined with ``batch=1`` gets every frame of a turn (direct) or everything queued
(queued) in one WebSocket message, the JSON objects separated by newlines.

Either way a member whose buffer would pass ``queue_bytes``, or whose socket accepts nothing for
``send_timeout`` seconds, is closed with ``SlowConsumer`` (1013). Until the welcome is sent, frames
wait in the queue.

On ``/ws`` (v1.1, many rooms on one socket) the socket's connection is welcomed by the ``hello``
frame and is in no room itself; each joined room is a ``Subscription``: the member's place in the
room (what the registry holds), with its own seq and welcome, whose frames go out through the
socket's one buffer.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio
from starlette.websockets import WebSocketDisconnect

from chat.exceptions import ConnectionClosed, SlowConsumer
from chat.frames import text_frame
from chat.protocol import Member, Message, encode_left

if TYPE_CHECKING:
    from chat.presence import Announcement

DIRECT_EXTENSION = "chat.direct"
"""The ASGI extension through which a server offers a ``DirectWriter`` (``scope["extensions"]``)."""
BUFFER_FULL = "slow consumer: outbound buffer full"
STALLED = "slow consumer: the socket took nothing for too long"


class Sender(Protocol):
    """What a queued connection needs of a websocket (Starlette's ``WebSocket`` fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class FrameBatch(Protocol):
    """Several text frames sent together (``chat.presence.Announcement``)."""

    @property
    def wire(self) -> bytes:
        """Their unmasked WebSocket bytes, one message each."""

    @property
    def text(self) -> str:
        """Their texts separated by newlines: one ``batch=1`` message."""

    @property
    def texts(self) -> list[str]:
        """Their texts."""


class DirectWriter(Protocol):
    """A socket that takes whole frames synchronously (``chat.uvicorn.ChatWebSocketProtocol``)."""

    stall_timeout: float
    batch: bool
    write_delay: float
    on_stall: Callable[[], None] | None
    """Called when the socket took nothing for ``stall_timeout`` seconds (cleared when the socket is gone)."""

    def direct_write(self, frame: str, wire: bytes) -> None:
        """Send the text frame ``frame``, whose unmasked WebSocket bytes are ``wire``."""

    def direct_write_many(self, frames: FrameBatch) -> None:
        """Send several text frames (``chat.presence.Announcement``)."""

    def direct_buffered(self) -> int:
        """Bytes written but not yet taken by the peer."""

    def direct_close(self, code: int, reason: str) -> None:
        """Send a close frame after what was written, and tell the app the connection is over."""


Queued = tuple[str, int, bytes | None]
"""A frame waiting in the buffer: its text, its message seq (0 for other frames, ``UNCOUNTED`` for one that
the buffer's limit does not count), its wire bytes if known."""
UNCOUNTED = -1


class Connection(abc.ABC):
    """A member's frames, oldest first, on their way to its socket."""

    __slots__ = (
        "_frames",
        "_limit",
        "_size",
        "_welcomed",
        "closed_by",
        "gone",
        "last_seq",
        "member",
        "presence",
        "room",
    )

    def __init__(self, member: Member, room: str, queue_bytes: int) -> None:
        self.member = member
        self.room = room
        self.presence = True
        """Whether the member gets the room's ``join``/``leave`` frames (``presence=0`` opts out)."""
        self.last_seq = 0
        self.closed_by: ConnectionClosed | None = None
        self.gone = False
        self._frames: deque[Queued] | None = None  # made when first needed
        self._size = 0
        self._limit = queue_bytes
        self._welcomed = False

    @property
    def is_open(self) -> bool:
        """True until a close is requested or the socket went away."""
        return self.closed_by is None and not self.gone

    @property
    def queue_bytes(self) -> int:
        """The buffer's limit."""
        return self._limit

    @property
    def welcomed(self) -> bool:
        """Whether the welcome was sent: from then on the member knows the room's member list."""
        return self._welcomed

    @property
    def close_code(self) -> int | None:
        """The code this connection was closed with by the server, if it was."""
        return None if self.closed_by is None else self.closed_by.close_code

    @property
    @abc.abstractmethod
    def buffered(self) -> int:
        """Characters (queued) or bytes (direct) waiting to be sent."""

    def send(self, frame: str, wire: bytes | None = None) -> None:
        """Send a frame to this member alone (ack, error, pong, history, join, leave, typing)."""
        self._push(frame, 0, wire)

    def forward(self, frame: str, wire: bytes) -> None:
        """Send a room's broadcast frame on behalf of one of this connection's rooms (``Subscription``)."""
        self._push(frame, 0, wire)

    def announce(self, announcement: Announcement) -> None:
        """Send a presence window's ``join`` and ``leave`` frames, together."""
        for signal in announcement.frames:
            self._push(signal.frame, 0, signal.wire)

    @abc.abstractmethod
    def send_unbounded(self, frame: str) -> None:
        """Send a frame the buffer's limit does not count: a room's welcome on ``/ws``, bounded by its history."""

    @abc.abstractmethod
    def deliver(self, message: Message) -> None:
        """Queue a room message unless this member already has it (seq at or below ``last_seq``)."""

    def welcome(self, frame: str, seq: int) -> None:
        """Send the welcome frame first, then what queued meanwhile that its history (up to ``seq``) does not hold.

        The welcome frame is bounded by the history size, not by the buffer: a member recovering a
        long gap must not be closed for it.
        """
        if not self.is_open:
            return
        kept = self._welcomed_at(seq)
        self._frames = None
        self._size = 0
        self.send_unbounded(frame)
        for queued, _, wire in kept:
            self._push(queued, 0, wire)

    def close(self, error: ConnectionClosed) -> None:
        """Close the socket with the error's code and detail; frames not yet sent are dropped. The first close wins."""
        if not self.is_open:
            return
        self.closed_by = error
        self._frames = None
        self._size = 0
        self._closing(error)

    @abc.abstractmethod
    def _closing(self, error: ConnectionClosed) -> None:
        """Have the socket closed."""

    @abc.abstractmethod
    def _push(self, frame: str, seq: int, wire: bytes | None) -> None:
        """Hand one frame on its way (``seq``: the message's, or 0)."""

    def _queue(self, frame: str, seq: int, wire: bytes | None) -> bool:
        """Append to the buffer; a frame that would overflow it closes the connection instead (False)."""
        if self._size + len(frame) > self._limit:
            self.close(SlowConsumer(BUFFER_FULL))
            return False
        self._size += len(frame)
        if self._frames is None:
            self._frames = deque()
        self._frames.append((frame, seq, wire))
        return True

    def _welcomed_at(self, seq: int) -> list[Queued]:
        """Mark the welcome sent with ``seq``; what queued meanwhile that its history does not hold."""
        kept = [item for item in self._frames or () if item[1] == 0 or item[1] > seq]
        self.last_seq = max(self.last_seq, seq)
        self._welcomed = True
        return kept


class DirectConnection(Connection):
    """Frames straight into the socket's write buffer (the server's ``chat.direct`` extension)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: DirectWriter, member: Member, room: str, queue_bytes: int) -> None:
        super().__init__(member, room, queue_bytes)
        self._writer = writer

    @property
    def buffered(self) -> int:
        return self._writer.direct_buffered() if self._welcomed else self._size

    def deliver(self, message: Message) -> None:
        seq = message.seq
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if not self._welcomed:
            if self.is_open:
                self._queue(message.frame, seq, message.wire)
        elif self.closed_by is None and not self.gone:  # the hot path of every broadcast: kept flat
            wire = message.wire
            writer = self._writer
            if writer.direct_buffered() + len(wire) > self._limit:
                self.close(SlowConsumer(BUFFER_FULL))
            else:
                writer.direct_write(message.frame, wire)

    def send_unbounded(self, frame: str) -> None:
        if not self._welcomed:
            self._push(frame, 0, None)
        elif self.is_open:
            self._writer.direct_write(frame, text_frame(frame.encode()))

    def forward(self, frame: str, wire: bytes) -> None:
        if self.closed_by is None and not self.gone:  # the hot path of a /ws broadcast, as flat as deliver's
            writer = self._writer
            if writer.direct_buffered() + len(wire) > self._limit:
                self.close(SlowConsumer(BUFFER_FULL))
            else:
                writer.direct_write(frame, wire)

    def announce(self, announcement: Announcement) -> None:
        if not self._welcomed or len(announcement.frames) == 1:
            super().announce(announcement)
        elif self.closed_by is None and not self.gone:
            wire = announcement.wire
            writer = self._writer
            if writer.direct_buffered() + len(wire) > self._limit:
                self.close(SlowConsumer(BUFFER_FULL))
            else:
                writer.direct_write_many(announcement)

    def stalled(self) -> None:
        """The socket took nothing for ``send_timeout`` seconds (the writer's ``on_stall``)."""
        self.close(SlowConsumer(STALLED))

    def _closing(self, error: ConnectionClosed) -> None:
        self._writer.direct_close(error.close_code, error.detail)

    def _push(self, frame: str, seq: int, wire: bytes | None) -> None:
        if not self.is_open:
            return
        if not self._welcomed:
            self._queue(frame, seq, wire)
            return
        if wire is None:
            wire = text_frame(frame.encode())
        if self._writer.direct_buffered() + len(wire) > self._limit:
            self.close(SlowConsumer(BUFFER_FULL))
        else:
            self._writer.direct_write(frame, wire)


class QueuedConnection(Connection):
    """Frames queued for a writer task (``run``) that awaits ``send_text`` (any ASGI server)."""

    __slots__ = ("_batch", "_send_scope", "_send_timeout", "_uncounted", "_wakeup", "_websocket", "_welcome")

    def __init__(
        self, websocket: Sender, member: Member, room: str, queue_bytes: int, send_timeout: float, batch: bool = False
    ) -> None:
        super().__init__(member, room, queue_bytes)
        self._websocket = websocket
        self._send_timeout = send_timeout
        self._batch = batch
        self._welcome: str | None = None
        self._uncounted = 0  # characters queued by send_unbounded, not counted against the limit
        self._wakeup: anyio.Event | None = None
        self._send_scope: anyio.CancelScope | None = None

    @property
    def buffered(self) -> int:
        return self._size + self._uncounted

    def deliver(self, message: Message) -> None:
        seq = message.seq
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        self._push(message.frame, seq, None)

    def send_unbounded(self, frame: str) -> None:
        if not self._welcomed:
            self._push(frame, 0, None)
        elif self.is_open:
            if self._frames is None:
                self._frames = deque()
            self._frames.append((frame, UNCOUNTED, None))
            self._uncounted += len(frame)
            self._wake()

    def welcome(self, frame: str, seq: int) -> None:
        if not self.is_open:
            return
        kept = self._welcomed_at(seq)
        self._frames = deque(kept)
        self._size = sum(len(item[0]) for item in kept)
        self._welcome = frame
        self._wake()

    async def run(self) -> None:
        """Send queued frames until the connection closes; return once it is closed or gone."""
        try:
            while self.is_open:
                frame = self._next_frame()
                if frame is None:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                    continue
                scope = self._send_scope = anyio.move_on_after(self._send_timeout)
                with scope:
                    await self._websocket.send_text(frame)
                self._send_scope = None
                if scope.cancelled_caught and self.is_open:
                    self.close(SlowConsumer(STALLED))
            if not self.gone and self.closed_by is not None:
                with anyio.move_on_after(self._send_timeout):
                    await self._websocket.close(self.closed_by.close_code, self.closed_by.detail)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the socket went away; the member is removed by whoever awaits us
        finally:
            self.gone = True

    def finish(self) -> None:
        """The socket is gone: let ``run`` return by itself (a task cancelled instead would leave its frames in a
        reference cycle through the CancelledError's traceback, for the collector to find)."""
        self.gone = True
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._wake()

    def _closing(self, error: ConnectionClosed) -> None:
        self._uncounted = 0
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._wake()

    def _push(self, frame: str, seq: int, wire: bytes | None) -> None:
        if self.is_open and self._queue(frame, seq, None):
            self._wake()

    def _next_frame(self) -> str | None:
        if not self._welcomed:
            return None
        if self._welcome is not None:
            frame, self._welcome = self._welcome, None
            return frame
        if not self._frames:
            return None
        if self._batch and len(self._frames) > 1:
            frames = [item[0] for item in self._frames]
            self._frames = None
            self._size = self._uncounted = 0
            return "\n".join(frames)
        frame, seq, _ = self._frames.popleft()
        if seq == UNCOUNTED:
            self._uncounted -= len(frame)
        else:
            self._size -= len(frame)
        return frame

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None


class Subscription(Connection):
    """One room of a ``/ws`` connection: the member's place in the room, its frames sent through the socket's.

    The registry holds it as it holds a v1 connection. Its own buffer only holds what arrives before the
    room's welcome. A close that concerns the room alone (``room_only``: restart, removed) takes the member
    out of the room with a ``left`` frame and ``on_close``; any other close takes the whole socket down.
    """

    __slots__ = ("_forward", "_on_close", "socket")

    def __init__(self, socket: Connection, room: str, on_close: Callable[[Subscription], None]) -> None:
        super().__init__(socket.member, room, socket.queue_bytes)
        self.socket = socket
        self._forward = socket.forward
        self._on_close = on_close

    @property
    def buffered(self) -> int:
        return self.socket.buffered if self._welcomed else self._size

    def send_unbounded(self, frame: str) -> None:
        if self.is_open:
            self.socket.send_unbounded(frame)

    def deliver(self, message: Message) -> None:
        seq = message.seq
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if self._welcomed:
            if self.closed_by is None and not self.gone:
                self._forward(message.frame, message.wire)
        elif self.is_open:
            self._queue(message.frame, seq, message.wire)

    def announce(self, announcement: Announcement) -> None:
        if self._welcomed:
            if self.is_open:
                self.socket.announce(announcement)
        else:
            super().announce(announcement)

    def _closing(self, error: ConnectionClosed) -> None:
        if error.room_only:
            self.socket.send(encode_left(self.room, None, error.reason))
            self._on_close(self)
        else:
            self.socket.close(error)

    def _push(self, frame: str, seq: int, wire: bytes | None) -> None:
        if not self.is_open:
            return
        if self._welcomed:
            self.socket.send(frame, wire)
        else:
            self._queue(frame, seq, wire)
