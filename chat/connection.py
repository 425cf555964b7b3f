"""One member's outbound side: a bounded buffer of frames, the writer that drains it, the close policy.

Broadcasts hand frames over without awaiting (``send``, ``deliver``); only the writer awaits the
socket, so a slow member never delays anyone else. A member whose buffer would overflow, or whose
socket accepts nothing for ``send_timeout`` seconds, is closed with 1013.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import anyio
from starlette.websockets import WebSocketDisconnect

from chat.protocol import Member, Message

SLOW_CONSUMER = 1013


class Sender(Protocol):
    """What a connection needs of a websocket (Starlette's ``WebSocket`` fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Connection:
    """A member's frames wait here until the writer (``run``) sends them, oldest first."""

    __slots__ = (
        "_frames",
        "_limit",
        "_send_scope",
        "_send_timeout",
        "_size",
        "_wakeup",
        "_websocket",
        "_welcome",
        "_welcomed",
        "close_code",
        "close_reason",
        "gone",
        "last_seq",
        "member",
        "room",
    )  # fmt: skip

    def __init__(self, websocket: Sender, member: Member, room: str, queue_bytes: int, send_timeout: float) -> None:
        self.member = member
        self.room = room
        self.last_seq = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.gone = False
        self._websocket = websocket
        self._frames: deque[tuple[str, int]] = deque()
        self._size = 0
        self._limit = queue_bytes
        self._send_timeout = send_timeout
        self._welcomed = False
        self._welcome: str | None = None
        self._wakeup: anyio.Event | None = None
        self._send_scope: anyio.CancelScope | None = None

    @property
    def is_open(self) -> bool:
        """True until a close is requested or the socket went away."""
        return self.close_code is None and not self.gone

    @property
    def buffered(self) -> int:
        """Characters waiting to be sent."""
        return self._size

    def send(self, frame: str) -> None:
        """Queue a frame for this member alone (ack, error, pong, history, join, leave, typing)."""
        self._push(frame, 0)

    def deliver(self, message: Message) -> None:
        """Queue a room message unless this member already has it (seq at or below ``last_seq``)."""
        if message.seq > self.last_seq:
            self.last_seq = message.seq
            self._push(message.frame, message.seq)

    def welcome(self, frame: str, seq: int) -> None:
        """Send the welcome frame first, then what queued meanwhile that its history does not hold.

        The welcome frame is bounded by the history size, not by the buffer: a member recovering a
        long gap must not be closed for it.
        """
        if not self.is_open:
            return
        kept = deque(item for item in self._frames if item[1] == 0 or item[1] > seq)
        self._frames = kept
        self._size = sum(len(item[0]) for item in kept)
        self.last_seq = max(self.last_seq, seq)
        self._welcome = frame
        self._welcomed = True
        self._wake()

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the socket with ``code``; frames not yet sent are dropped."""
        if not self.is_open:
            return
        self.close_code = code
        self.close_reason = reason
        self._frames.clear()
        self._size = 0
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
        frame, _ = self._frames.popleft()
        self._size -= len(frame)
        return frame

    def _push(self, frame: str, seq: int) -> None:
        if not self.is_open:
            return
        if self._size + len(frame) > self._limit:
            self.close(SLOW_CONSUMER, "slow consumer: outbound buffer full")
            return
        self._size += len(frame)
        self._frames.append((frame, seq))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
