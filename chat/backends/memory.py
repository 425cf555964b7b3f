"""The embedded default: one process, nothing to install, everything in memory.

Every operation completes without awaiting anything, so a message gets its seq, enters history
and reaches the registry in one uninterrupted step: order is the same for every member.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.protocol import Member, Message, Remove, Signal
from chat.settings import Settings

_Stored = tuple[int, str, str, str, int, str]
"""A message in history: seq, sender id, sender name, text, ts, frame. Atomic values only, so the
garbage collector stops tracking it: a full history costs no time in collections."""


class _Room:
    __slots__ = ("epoch", "history", "members", "name", "seq")

    def __init__(self, name: str, history_size: int) -> None:
        self.name = name
        self.epoch = secrets.token_urlsafe(9)
        self.seq = 0
        self.history: deque[_Stored] = deque(maxlen=history_size)
        self.members: dict[str, Member] = {}

    def store(self, message: Message) -> None:
        sender = message.sender
        self.history.append((message.seq, sender.id, sender.name, message.text, message.ts, message.frame))

    def after(self, seq: int) -> list[Message] | None:
        """Every retained message with seq above ``seq``, or None when some of them are gone."""
        oldest = self.history[0][0] if self.history else self.seq + 1
        if seq + 1 < oldest or seq > self.seq:
            return None
        return self._messages(islice(self.history, seq + 1 - oldest, None))

    def before(self, seq: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq below ``seq``, oldest first."""
        if not self.history:
            return []
        end = len(self.history) if seq is None else max(0, min(len(self.history), seq - self.history[0][0]))
        return self._messages(islice(self.history, max(0, end - limit), end))

    def _messages(self, stored: Iterable[_Stored]) -> list[Message]:
        return [
            Message.with_frame(self.name, seq, Member(sender_id, sender_name), text, ts, frame)
            for seq, sender_id, sender_name, text, ts, frame in stored
        ]


class MemoryBackend(Backend):
    """Rooms live as long as they have members, and for ``history_ttl`` seconds after the last leaves."""

    name = "memory"

    def __init__(self, url: str, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(url, settings)
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        self._idle: dict[str, float] = {}  # rooms without members -> since when, oldest first
        self._subscribed: set[str] = set()
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        return self._publish(room, sender, text)

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        future.set_result(self._publish(room, sender, text))
        if done is not None:
            done(future)
        return future

    def _publish(self, room: str, sender: Member, text: str) -> Message:
        state = self._room(room)
        state.seq += 1
        message = Message(room, state.seq, sender, text, time.time_ns() // 1_000_000)
        state.store(message)
        if not state.members:
            self._mark_idle(room)
        self._send(room, message)
        return message

    def relay(self, message: Message, epoch: str) -> None:
        self._send(message.room, message)

    async def signal(self, signal: Signal) -> None:
        self._send(signal.room, signal)

    async def join(self, room: str, member: Member) -> None:
        self._room(room).members[member.id] = member
        self._idle.pop(room, None)
        self._send(room, Signal("join", room, member))

    async def leave(self, room: str, member: Member) -> None:
        state = self._rooms.get(room)
        if state is None or state.members.pop(member.id, None) is None:
            return
        if not state.members:
            self._mark_idle(room)
        self._send(room, Signal("leave", room, member))

    async def members(self, room: str) -> list[Member]:
        state = self._rooms.get(room)
        return list(state.members.values()) if state else []

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        state = self._room(room)
        if since is not None and epoch == state.epoch:
            missed = state.after(since)
            if missed is not None:
                return Snapshot(state.seq, state.epoch, missed, recovered=True)
        return Snapshot(state.seq, state.epoch, state.before(None, self.settings.history_on_join))

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        state = self._rooms.get(room)
        return state.before(before, limit) if state else []

    async def remove(self, room: str, member_id: str) -> None:
        self._send(room, Remove(room, member_id))

    async def rooms(self) -> list[RoomSummary]:
        self._sweep()
        return [RoomSummary(room, len(state.members)) for room, state in self._rooms.items()]

    async def exists(self, room: str) -> bool:
        self._sweep()
        return room in self._rooms

    async def healthy(self) -> bool:
        return True

    @property
    def room_count(self) -> int:
        """Rooms whose state is kept (with members, or idle within the TTL)."""
        self._sweep()
        return len(self._rooms)

    def _send(self, room: str, event: Message | Signal | Remove) -> None:
        if self._deliver is not None and room in self._subscribed:
            self._deliver(event)

    def _room(self, room: str) -> _Room:
        self._sweep()
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(room, self.settings.history_size)
            self._mark_idle(room)
        return state

    def _mark_idle(self, room: str) -> None:
        self._idle.pop(room, None)
        self._idle[room] = self._clock()

    def _sweep(self) -> None:
        """Drop rooms idle past the TTL, and the longest idle ones beyond ``max_rooms``."""
        deadline = self._clock() - self.settings.history_ttl
        while self._idle:
            room, since = next(iter(self._idle.items()))
            if since > deadline and len(self._rooms) <= self.settings.max_rooms:
                return
            del self._idle[room]
            del self._rooms[room]
