"""The receiving end: one pub/sub connection per process, for every room with local members.

It remembers the last seq it delivered per room; a seq gap (a dropped link, a node that fell
behind, a message that overtook an earlier one) is filled from history before anything newer is
delivered, and what arrives late is dropped. A changed epoch (Redis came back empty) delivers
``Restart``, which closes the room's members with 1012 so that they rejoin and learn it. The link
reconnects with backoff, resubscribes every room and catches each up; whatever it dies of is logged
and it is started again.

History is Redis's own, or a store's (``RedisBackend.record_in``): a store's epoch outlives Redis,
so Redis coming back empty is then one more gap to fill.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chat.backends.base import Deliver, Snapshot, StateListener
from chat.backends.redis.errors import unavailable
from chat.backends.redis.scripts import CONTROL_CHANNEL, room_channel, room_of
from chat.exceptions import Unavailable
from chat.protocol import Member, Message, Present, Remove, Restart, Signal

logger = logging.getLogger("chat.redis")

SUBSCRIBE_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0

ReadSnapshot = Callable[[str, int | None, str | None, int], Awaitable[Snapshot]]
"""The backend's snapshot read: room, since, epoch, how many on a fresh join."""
ReadMembers = Callable[[str], Awaitable[list[Member]]]
"""The backend's presence read: a room's members on every process."""


@dataclass
class _Cursor:
    """The last seq this process delivered in a room, under which epoch."""

    epoch: str
    seq: int


class Listener:
    """Hands every event of the subscribed rooms to ``deliver``, in seq order, whatever happens to the link."""

    def __init__(
        self,
        subscriber: aioredis.Redis,
        read_snapshot: ReadSnapshot,
        state_changed: StateListener,
        read_members: ReadMembers | None = None,
    ) -> None:
        self.deliver: Deliver | None = None
        self.up = False  # the link is subscribed: the backend can serve
        self.ready = anyio.Event()
        self.restarts = 0
        self._subscriber = subscriber
        self.read_members = read_members
        self.read_snapshot = read_snapshot  # where positions and missed messages are read
        self.linked: Callable[[], Awaitable[None]] | None = None  # awaited each time the link is up, before catch-up
        self._state_changed = state_changed
        self._subscribed: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._pubsub: Any = None
        self._was_up = False  # the current link got as far as subscribing

    def start(self, deliver: Deliver) -> None:
        """Deliver to ``deliver`` from now on; ``ready`` is set once the link (``run_forever``) is up."""
        self.deliver = deliver
        self.ready = anyio.Event()

    def detach(self) -> None:
        """Forget the link the backend is about to close on purpose (which is not the backend going down)."""
        self._pubsub = None  # members leaving meanwhile must not use the half-closed link
        self.up = False

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room and wait until its position is known; ``Unavailable`` (unsubscribed) if not."""
        self._subscribed.add(room)
        confirmed = self._confirmed[room] = anyio.Event()
        try:
            with unavailable("backend unavailable: cannot subscribe"), anyio.fail_after(SUBSCRIBE_TIMEOUT):
                if self._pubsub is not None:
                    await self._pubsub.subscribe(room_channel(room))
                await confirmed.wait()
        except Unavailable:
            await self.unsubscribe(room)
            raise

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's events."""
        self._subscribed.discard(room)
        self._cursors.pop(room, None)
        self._confirmed.pop(room, None)
        if self._pubsub is not None:
            with suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(room_channel(room))

    async def run_forever(self) -> None:
        """Keep one pub/sub link up, whatever happens to it; never give up, never die silently."""
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._listen()
            except (RedisError, OSError, Unavailable) as exc:
                if self.up:
                    logger.warning("redis pub/sub link lost: %s; reconnecting", exc)
            except Exception:
                logger.exception("redis pub/sub listener failed; restarting it")
            finally:
                if self.up:
                    self._state_changed(False)
                self.up = False
                self._pubsub = None
            self.restarts += 1
            await anyio.sleep(delay)
            delay = BACKOFF_FIRST if self._was_up else min(delay * 2, BACKOFF_MAX)

    async def _listen(self) -> None:
        pubsub = self._subscriber.pubsub()
        self._was_up = False
        try:
            rooms = set(self._subscribed)
            await pubsub.subscribe(CONTROL_CHANNEL, *(room_channel(room) for room in rooms))
            self._pubsub = pubsub
            joined_meanwhile = self._subscribed - rooms
            if joined_meanwhile:
                await pubsub.subscribe(*(room_channel(room) for room in joined_meanwhile))
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    await self._handle(message)
        finally:
            with anyio.CancelScope(shield=True), suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if kind == "subscribe":
            if channel == CONTROL_CHANNEL:
                if self.linked is not None:
                    await self.linked()
                self.up = self._was_up = True
                self.ready.set()
                logger.info("redis pub/sub link up (%d rooms)", len(self._subscribed))
                self._state_changed(True)
            else:
                await self._sync(room_of(channel))
        elif kind == "message" and channel != CONTROL_CHANNEL:
            await self._receive(room_of(channel), data)

    async def _sync(self, room: str) -> None:
        """A (re)subscription is confirmed: learn the room's position, delivering what was missed."""
        if room not in self._subscribed:
            return
        cursor = self._cursors.get(room)
        if cursor is None:
            snapshot = await self.read_snapshot(room, None, None, 0)
            self._cursors[room] = _Cursor(snapshot.epoch, snapshot.seq)
        else:
            await self._catch_up(room, cursor)
            await self._resync(room)
        confirmed = self._confirmed.get(room)
        if confirmed is not None:
            confirmed.set()

    async def _resync(self, room: str) -> None:
        """After a dropped link: the room's members as Redis lists them, for joins and leaves missed meanwhile."""
        if self.read_members is None:
            return
        members = await self.read_members(room)
        if self.deliver is not None and room in self._cursors:
            self.deliver(Present(room, tuple(members)))

    async def _receive(self, room: str, data: str) -> None:
        cursor = self._cursors.get(room)
        if cursor is None or self.deliver is None:
            return  # not (or no longer) subscribed here
        if data.startswith("s:"):
            self.deliver(Signal.from_frame(data[2:]))
            return
        if data.startswith("r:"):
            self.deliver(Remove(room, data[2:]))
            return
        _, epoch, frame = data.split(":", 2)
        message = Message.from_frame(frame)
        if epoch != cursor.epoch or message.seq > cursor.seq + 1:
            await self._catch_up(room, cursor)
        if epoch == cursor.epoch and message.seq == cursor.seq + 1:
            cursor.seq = message.seq
            self.deliver(message)

    async def _catch_up(self, room: str, cursor: _Cursor) -> None:
        """Deliver everything after the cursor from history, or restart the room if that is gone."""
        snapshot = await self.read_snapshot(room, cursor.seq, cursor.epoch, 0)
        deliver = self.deliver
        if deliver is None:
            return
        if not snapshot.recovered:
            logger.warning("room %s restarted under epoch %s: closing its members", room, snapshot.epoch)
            cursor.epoch, cursor.seq = snapshot.epoch, snapshot.seq
            deliver(Restart(room, snapshot.epoch))
            return
        for message in snapshot.messages:
            if message.seq == cursor.seq + 1:
                cursor.seq = message.seq
                deliver(message)
