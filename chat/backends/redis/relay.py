"""The relay path: messages a store committed go out on their room's channel, without waiting for Redis.

With a store the seq is given before the message reaches Redis, so relaying is a plain ``PUBLISH``
of ``m:<epoch>:<frame>``. The relays of one event-loop turn leave in one write, in the order they
were relayed: on a connection of its own (``link.Link``, replies read and ignored) or, where the
link cannot serve (``link_supported``), as a redis-py pipeline, one at a time.

A relay Redis may not have carried (the connection failed) is lost for live delivery only: every
listener fills a seq gap from the store. So that a room's last message is not stuck until the next
one, the last lost relay of each room is sent again once Redis can be reached; a listener that
already has it drops it. Stopping sends what is queued and waits a moment for Redis to take it.
"""

from __future__ import annotations

import abc
import asyncio
import logging

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chat.backends.redis.link import Link, LinkLost, Reply, command
from chat.backends.redis.publisher import cancel_task
from chat.backends.redis.scripts import room_channel
from chat.protocol import Message

logger = logging.getLogger("chat.redis")

RETRY_FIRST = 0.05
RETRY_MAX = 1.0
STOP_WAIT = 1.0

Relayed = tuple[str, bytes, bytes]
"""A relay on its way: the room, its channel and the payload, encoded."""


class Relay(abc.ABC):
    """Sends relays in batches, in order; remembers each room's last lost relay and sends it again later."""

    def __init__(self) -> None:
        self._queued: list[Relayed] = []  # relayed, not yet sent
        self._scheduled = False  # a send is coming that takes whatever is queued by then
        self._lost: dict[str, Relayed] = {}  # room -> its latest relay that may not have reached Redis
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST
        self._stopping = False

    def relay(self, message: Message, epoch: str) -> None:
        """Queue the message for its room's channel; it leaves with the others relayed this turn."""
        room = message.room
        self._queued.append((room, room_channel(room).encode(), f"m:{epoch}:{message.frame}".encode()))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)

    async def stop(self) -> None:
        """Send what is queued if Redis can take it within ``STOP_WAIT``; drop the rest (the store has it)."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        await self._flush()
        self._queued.clear()
        self._lost.clear()

    @abc.abstractmethod
    def _send_queued(self) -> None:
        """Send what is queued (clearing ``_scheduled``), or leave it queued until the connection is up."""

    @abc.abstractmethod
    async def _flush(self) -> None:
        """Send what is queued on a connection that is up, and wait at most ``STOP_WAIT`` for Redis to take it."""

    def _sent(self) -> None:
        """Redis can be reached again: the next loss waits the shortest pause."""
        self._retry_delay = RETRY_FIRST

    def _lose(self, relays: list[Relayed], error: BaseException) -> None:
        """Relays Redis may not have carried: keep each room's last, and send it again after a pause."""
        logger.debug("%d relays lost for live delivery: %s", len(relays), error)
        if self._stopping:
            return
        for relayed in relays:
            self._lost[relayed[0]] = relayed
        if self._lost and self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(self._retry_delay, self._resend_lost)
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _resend_lost(self) -> None:
        """Put the lost relays before anything queued (they are older) and send them."""
        self._retry = None
        lost, self._lost = list(self._lost.values()), {}
        self._queued[:0] = lost
        if not self._scheduled:
            self._scheduled = True
            self._send_queued()


class _Batch:
    """Waits for the replies to one batch's ``PUBLISH``es, which matter only if the link is lost first."""

    __slots__ = ("lost", "relay", "relays")

    def __init__(self, relay: LinkRelay, relays: list[Relayed]) -> None:
        self.relay = relay
        self.relays = relays
        self.lost = False

    def settle(self, reply: object) -> None:
        if isinstance(reply, LinkLost) and not self.lost:
            self.lost = True  # some may have gone through: sending them again is harmless
            self.relay._lose(self.relays, reply)


class LinkRelay(Relay):
    """A batch is one write on a connection of its own; replies are read only to keep the link in step."""

    def __init__(self, url: str, connect_timeout: float, reply_timeout: float) -> None:
        super().__init__()
        self._url = url
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._link: Link | None = None
        self._connecting: asyncio.Task[None] | None = None

    def _send_queued(self) -> None:
        if not self._queued:
            self._scheduled = False
            return
        link = self._link
        if link is None or link.closed:
            if self._connecting is None and not self._stopping:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="chat-redis-relay")
            return
        self._scheduled = False
        self._write(link)

    def _write(self, link: Link) -> None:
        """Write every queued relay on the link, as one write."""
        batch, self._queued = self._queued, []
        data = b"".join([command(b"PUBLISH", channel, payload) for _, channel, payload in batch])
        link.send(data, [_Batch(self, batch)] * len(batch))
        self._sent()

    async def _flush(self) -> None:
        with anyio.move_on_after(STOP_WAIT):
            connecting = self._connecting
            if connecting is not None:
                await asyncio.shield(connecting)  # which sends what is queued
            link = self._link
            if link is not None and not link.closed:
                if self._queued:
                    self._write(link)
                drained: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                link.send(command(b"PING"), [Reply(drained)])
                await drained
        await cancel_task(self._connecting)
        link, self._link = self._link, None
        if link is not None:
            link.close()

    async def _connect(self) -> None:
        """Open the link and send what waits; if Redis cannot be reached, those relays are lost."""
        try:
            self._link = await Link.open(self._url, self._connect_timeout, self._reply_timeout)
        except Exception as exc:
            if not isinstance(exc, OSError | TimeoutError | LinkLost):
                logger.exception("redis relay link failed")
            self._scheduled = False
            lost, self._queued = self._queued, []
            self._lose(lost, exc)
            return
        finally:
            self._connecting = None
        self._send_queued()


class PipelineRelay(Relay):
    """A batch is one redis-py pipeline; the next one waits for its replies."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__()
        self._redis = redis
        self._task: asyncio.Task[None] | None = None

    def _send_queued(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_batches(), name="chat-redis-relay")

    async def _flush(self) -> None:
        if self._queued:
            self._send_queued()
        task = self._task
        if task is not None:
            with anyio.move_on_after(STOP_WAIT):
                await asyncio.shield(task)
        await cancel_task(self._task)

    async def _send_batches(self) -> None:
        """Send what is queued as one pipeline, wait for its replies, repeat; one pipeline at a time keeps order."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for _, channel, payload in batch:
                            pipe.publish(channel, payload)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    self._lose(batch, exc)
                else:
                    self._sent()
        finally:
            self._task = None
            self._scheduled = False
