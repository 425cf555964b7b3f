"""The Redis backend: rooms shared by every process on one Redis (the package docstring has the layout)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.backends.redis.errors import unavailable
from chat.backends.redis.link import link_supported
from chat.backends.redis.listener import Listener
from chat.backends.redis.presence import Presence
from chat.backends.redis.publisher import LinkPublisher, PipelinePublisher, Publish, Publisher, cancel_task
from chat.backends.redis.relay import LinkRelay, PipelineRelay, Relay
from chat.backends.redis.scripts import (
    ENTER,
    EVERY_EPOCH_KEY,
    EVERY_PRESENCE_KEY,
    HISTORY,
    SNAPSHOT,
    key_ttl,
    new_epoch,
    room_channel,
    room_keys,
    room_of,
)
from chat.logs import redact_url
from chat.protocol import Member, Message, Signal, message_frame_parts
from chat.settings import Settings

if TYPE_CHECKING:
    from chat.stores.base import Store

logger = logging.getLogger("chat.redis")

ROOM_SCAN_BATCH = 1000
CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0
STARTUP_WAIT = 2.0


class RedisBackend(Backend):
    """Rooms shared by every process on one Redis; see the package docstring for the layout."""

    name = "redis"

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(url, settings)
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": REPLY_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
        }
        # A pooled connection to a Redis that restarted fails once on use: try again on a new one.
        # Timeouts are never retried, since the script may have run.
        retry_once = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = aioredis.Redis.from_url(url, retry=retry_once, **options)
        # The pub/sub link never reconnects behind our back: the listener must see every drop to catch up.
        self._subscriber = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        self._snapshot = self._redis.register_script(SNAPSHOT)
        self._enter = self._redis.register_script(ENTER)
        self._history = self._redis.register_script(HISTORY)
        self._ttl = key_ttl(settings)
        self._presence = Presence(self._redis, settings)
        self._listener = Listener(self._subscriber, self._read_snapshot, self.state_changed, self._presence.members)
        self._runner: asyncio.Task[None] | None = None
        self._publisher: Publisher = (
            LinkPublisher(url, settings, CONNECT_TIMEOUT, REPLY_TIMEOUT)
            if link_supported(url)
            else PipelinePublisher(self._redis, settings)
        )
        self._relay: Relay | None = None  # with a store (``record_in``)
        self._room_pattern = EVERY_EPOCH_KEY

    def record_in(self, store: Store) -> None:
        """Positions and gaps come from the store; Redis carries the store's messages (``relay``) and presence."""
        self._listener.read_snapshot = store.snapshot
        self._presence.record_elsewhere()
        self._listener.linked = self._presence.rejoin  # Redis may have come back empty: closing nobody
        self._room_pattern = EVERY_PRESENCE_KEY
        url = self.url
        self._relay = (
            LinkRelay(url, CONNECT_TIMEOUT, REPLY_TIMEOUT) if link_supported(url) else PipelineRelay(self._redis)
        )

    def relay(self, message: Message, epoch: str) -> None:
        relay = self._relay
        if relay is None:
            raise RuntimeError("relay needs a store: call record_in first")
        relay.relay(message, epoch)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Start the listener and heartbeats; wait briefly for the pub/sub link, but serve without it."""
        listener = self._listener
        listener.start(deliver)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="chat-redis")
        with anyio.move_on_after(STARTUP_WAIT):
            await listener.ready.wait()
        if not listener.up:
            logger.warning("redis at %s not reachable yet; serving degraded until it is", redact_url(self.url))
            self.state_changed(False)

    async def stop(self) -> None:
        await self._publisher.stop()
        if self._relay is not None:
            await self._relay.stop()
        runner, self._runner = self._runner, None
        self._listener.detach()  # closing below
        await cancel_task(runner)
        with suppress(RedisError, OSError):
            await self._redis.aclose()
            await self._subscriber.aclose()
        self._listener.deliver = None

    async def healthy(self) -> bool:
        if not self._listener.up:
            return False
        try:
            with anyio.fail_after(1.0):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    @property
    def listener_restarts(self) -> int:
        """How many times the pub/sub listener started again."""
        return self._listener.restarts

    async def _run(self) -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._listener.run_forever)
            task_group.start_soon(self._presence.run_forever)

    # --- where messages are recorded: seq, epoch, history ------------------------------------

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        return await self.start_publish(room, sender, text)

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        ts = time.time_ns() // 1_000_000
        head, tail = message_frame_parts(room, sender, text, ts)
        loop = asyncio.get_running_loop()
        publish = Publish(room, sender, text, ts, head, tail, loop.create_future(), done)
        publisher = self._publisher
        publisher.queued.append(publish)
        if not publisher.scheduled:
            publisher.send_soon(loop)
        return publish.future

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        return await self._read_snapshot(room, since, epoch, self.settings.history_on_join)

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        _, seq_key, history_key, _ = room_keys(room)
        with unavailable():
            frames = await self._history(keys=[seq_key, history_key], args=[-1 if before is None else before, limit])
        return [Message.from_frame(frame) for frame in frames]

    async def exists(self, room: str) -> bool:
        with unavailable():
            return bool(await self._redis.exists(room_keys(room)[0]))

    async def enter(self, room: str, member: Member, announce: bool, since: int | None, epoch: str | None) -> Snapshot:
        if not announce or self._relay is not None:  # with a store, the snapshot is the store's
            return await super().enter(room, member, announce, since, epoch)
        count = self.settings.history_on_join
        args = [*self._snapshot_args(since, epoch, count), *self._presence.join_args(room, member)]
        with unavailable():
            reply = await self._enter(keys=list(room_keys(room)), args=args)
        self._presence.joined(room, member)
        return _snapshot_of(reply)

    async def _read_snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        with unavailable():
            reply = await self._snapshot(keys=room_keys(room)[:3], args=self._snapshot_args(since, epoch, count))
        return _snapshot_of(reply)

    def _snapshot_args(self, since: int | None, epoch: str | None, count: int) -> list[str | int]:
        return [new_epoch(), self._ttl, -1 if since is None else since, epoch or "", count]

    # --- how frames reach other processes: fan-out, presence, typing -------------------------

    async def subscribe(self, room: str) -> None:
        await self._listener.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        await self._listener.unsubscribe(room)

    async def signal(self, signal: Signal) -> None:
        with unavailable():
            await self._redis.publish(room_channel(signal.room), "s:" + signal.frame)

    async def remove(self, room: str, member_id: str) -> None:
        with unavailable():
            await self._redis.publish(room_channel(room), "r:" + member_id)

    async def join(self, room: str, member: Member) -> None:
        await self._presence.join(room, member)

    async def leave(self, room: str, member: Member) -> None:
        await self._presence.leave(room, member)

    async def members(self, room: str) -> list[Member]:
        return await self._presence.members(room)

    # --- the operator's listing --------------------------------------------------------------

    async def rooms(self) -> list[RoomSummary]:
        with unavailable():
            pattern = self._room_pattern  # every epoch key, or every presence key with a store
            keys = {key async for key in self._redis.scan_iter(pattern, ROOM_SCAN_BATCH)}  # SCAN may repeat
            rooms = sorted(room_of(key.rsplit(":", 1)[0]) for key in keys)
            now_ms = time.time_ns() // 1_000_000
            async with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.zcount(room_keys(room)[3], now_ms, "+inf")
                counts = await pipe.execute()
        return [RoomSummary(room, int(count)) for room, count in zip(rooms, counts, strict=True)]


def _snapshot_of(reply: list[Any]) -> Snapshot:
    """A SNAPSHOT (or ENTER) script's reply as a snapshot."""
    seq, room_epoch, recovered, *frames = reply
    return Snapshot(int(seq), str(room_epoch), [Message.from_frame(f) for f in frames], recovered == 1)
