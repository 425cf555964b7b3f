"""One member's outbound side: a bounded buffer of frames, how it reaches the socket, the close policy.

Broadcasts hand frames over without awaiting (``send``, ``deliver``), so a slow member never delays
anyone else. Two ways to the socket:

- direct: under the server's own protocol (``chat.server``), frames go straight into the socket's
  write buffer, already framed (a broadcast is framed once for everyone), and leave in one write
  per event-loop turn (or per ``write_delay`` seconds);
- queued: under any other ASGI server, a writer task (``run``) awaits ``send_text`` frame by frame.

A member that joined with ``batch=1`` gets every frame of a turn (direct) or everything queued
(queued) in one WebSocket message, the JSON objects separated by newlines.

Either way a member whose buffer would pass ``queue_bytes``, or whose socket accepts nothing for
``send_timeout`` seconds, is closed with 1013. Until the welcome is sent, frames wait in the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import anyio
from starlette.websockets import WebSocketDisconnect

from chat.frames import text_frame
from chat.protocol import Member, Message

SLOW_CONSUMER = 1013
DIRECT_EXTENSION = "chat.direct"
"""The ASGI extension through which a server offers a ``DirectWriter`` (``scope["extensions"]``)."""


class Sender(Protocol):
    """What a connection needs of a websocket (Starlette's ``WebSocket`` fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class DirectWriter(Protocol):
    """A socket that takes whole frames synchronously (``chat.server.ChatWebSocketProtocol``)."""

    stall_timeout: float
    batch: bool
    write_delay: float

    def direct_write(self, frame: str, wire: bytes) -> None:
        """Send the text frame ``frame``, whose unmasked WebSocket bytes are ``wire``."""

    def direct_buffered(self) -> int:
        """Bytes written but not yet taken by the peer."""

    def direct_close(self, code: int, reason: str) -> None:
        """Send a close frame after what was written, and tell the app the connection is over."""


class Connection:
    """A member's frames, oldest first, on their way to its socket."""

    __slots__ = (
        "_batch",
        "_frames",
        "_limit",
        "_send_scope",
        "_send_timeout",
        "_size",
        "_wakeup",
        "_websocket",
        "_welcome",
        "_welcomed",
        "_writer",
        "close_code",
        "close_reason",
        "gone",
        "last_seq",
        "member",
        "room",
    )

    def __init__(
        self,
        websocket: Sender,
        member: Member,
        room: str,
        queue_bytes: int,
        send_timeout: float,
        writer: DirectWriter | None = None,
        batch: bool = False,
        write_delay: float = 0.0,
    ) -> None:
        self.member = member
        self.room = room
        self.last_seq = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.gone = False
        self._websocket = websocket
        self._frames: deque[tuple[str, int, bytes | None]] | None = None  # made when first needed
        self._size = 0
        self._limit = queue_bytes
        self._send_timeout = send_timeout
        self._welcomed = False
        self._welcome: str | None = None
        self._wakeup: anyio.Event | None = None
        self._send_scope: anyio.CancelScope | None = None
        self._writer = writer
        self._batch = batch
        if writer is not None:
            writer.stall_timeout = send_timeout
            writer.batch = batch
            writer.write_delay = write_delay

    @property
    def is_open(self) -> bool:
        """True until a close is requested or the socket went away."""
        return self.close_code is None and not self.gone

    @property
    def buffered(self) -> int:
        """Characters (queued) or bytes (direct) waiting to be sent."""
        if self._writer is not None and self._welcomed:
            return self._writer.direct_buffered()
        return self._size

    def send(self, frame: str, wire: bytes | None = None) -> None:
        """Send a frame to this member alone (ack, error, pong, history, join, leave, typing)."""
        self._push(frame, 0, wire)

    def deliver(self, message: Message) -> None:
        """Queue a room message unless this member already has it (seq at or below ``last_seq``)."""
        seq = message.seq
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        writer = self._writer
        if writer is None or not self._welcomed:
            self._push(message.frame, seq, None if writer is None else message.wire)
        elif self.close_code is None and not self.gone:  # the hot path of every broadcast, inlined
            wire = message.wire
            if writer.direct_buffered() + len(wire) > self._limit:
                self.close(SLOW_CONSUMER, "slow consumer: outbound buffer full")
            else:
                writer.direct_write(message.frame, wire)

    def welcome(self, frame: str, seq: int) -> None:
        """Send the welcome frame first, then what queued meanwhile that its history does not hold.

        The welcome frame is bounded by the history size, not by the buffer: a member recovering a
        long gap must not be closed for it.
        """
        if not self.is_open:
            return
        kept = [item for item in self._frames or () if item[1] == 0 or item[1] > seq]
        self.last_seq = max(self.last_seq, seq)
        self._welcomed = True
        if self._writer is not None:
            self._frames = None
            self._size = 0
            self._writer.direct_write(frame, text_frame(frame.encode()))
            for queued, _, wire in kept:
                self._push(queued, 0, wire)
            return
        self._frames = deque(kept)
        self._size = sum(len(item[0]) for item in kept)
        self._welcome = frame
        self._wake()

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the socket with ``code``; frames not yet sent are dropped."""
        if not self.is_open:
            return
        self.close_code = code
        self.close_reason = reason
        self._frames = None
        self._size = 0
        if self._writer is not None:
            self._writer.direct_close(code, reason)
            return
        if self._send_scope is not None:
            self._send_scope.cancel()
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
                    self.close(SLOW_CONSUMER, "slow consumer: the socket took nothing for too long")
            if not self.gone and self.close_code is not None:
                with anyio.move_on_after(self._send_timeout):
                    await self._websocket.close(self.close_code, self.close_reason)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the socket went away; the member is removed by whoever awaits us
        finally:
            self.gone = True

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
            self._size = 0
            return "\n".join(frames)
        frame, _, _ = self._frames.popleft()
        self._size -= len(frame)
        return frame

    def _push(self, frame: str, seq: int, wire: bytes | None) -> None:
        if not self.is_open:
            return
        writer = self._writer
        if writer is not None and self._welcomed:
            if wire is None:
                wire = text_frame(frame.encode())
            if writer.direct_buffered() + len(wire) > self._limit:
                self.close(SLOW_CONSUMER, "slow consumer: outbound buffer full")
            else:
                writer.direct_write(frame, wire)
            return
        if self._size + len(frame) > self._limit:
            self.close(SLOW_CONSUMER, "slow consumer: outbound buffer full")
            return
        self._size += len(frame)
        if self._frames is None:
            self._frames = deque()
        self._frames.append((frame, seq, wire))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
