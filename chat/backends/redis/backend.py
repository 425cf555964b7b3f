"""The Redis backend: rooms shared by every process on one Redis (the package docstring has the layout)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.backends.redis.errors import UNAVAILABLE, unavailable
from chat.backends.redis.link import Link, LinkLost, bulk_strings, link_supported
from chat.exceptions import Unavailable
from chat.protocol import Member, Message, Remove, Restart, Signal, message_frame_parts
from chat.settings import Settings

logger = logging.getLogger("chat.redis")

CONTROL_CHANNEL = "chat:_control"
ROOM_SCAN_BATCH = 1000
SUBSCRIBE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0
STARTUP_WAIT = 2.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0

# Every script that reads or writes a room's sequence starts here (KEYS: epoch, seq, history;
# ARGV[1]: a fresh epoch, ARGV[2]: the keys' TTL): a room Redis does not know starts a new epoch.
# Each such script ends by refreshing the three keys' TTL (after INCR/RPUSH may have made them).
_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""
_REFRESH_TTL = """
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
"""

# ARGV[3..]: frame head, frame tail, history size, channel.
_PUBLISH = (
    _ENSURE_EPOCH
    + """
local seq = redis.call('INCR', KEYS[2])
local frame = ARGV[3] .. seq .. ARGV[4]
redis.call('RPUSH', KEYS[3], frame)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[6], 'm:' .. epoch .. ':' .. frame)
"""
    + _REFRESH_TTL
    + """
return {seq, epoch}
"""
)

# ARGV[3..]: since (-1: none), the client's epoch, how many on a fresh join.
# Returns {seq, epoch, recovered (0/1), frames...}.
_SNAPSHOT = (
    _ENSURE_EPOCH
    + """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = redis.call('LLEN', KEYS[3])
local oldest = seq - length + 1
local since = tonumber(ARGV[3])
local result = {seq, epoch, 0}
local first = length - tonumber(ARGV[5])
if since >= 0 and ARGV[4] == epoch and since <= seq and since + 1 >= oldest then
  result[3] = 1
  first = since + 1 - oldest
end
if first < 0 then first = 0 end
if first < length then
  for _, frame in ipairs(redis.call('LRANGE', KEYS[3], first, -1)) do table.insert(result, frame) end
end
"""
    + _REFRESH_TTL
    + """
return result
"""
)

# KEYS: seq, history. ARGV: before (-1: latest), limit.
_HISTORY = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local length = redis.call('LLEN', KEYS[2])
local oldest = seq - length + 1
local stop = length
local before = tonumber(ARGV[1])
if before >= 0 then stop = math.max(0, math.min(length, before - oldest)) end
local start = math.max(0, stop - tonumber(ARGV[2]))
if stop <= start then return {} end
return redis.call('LRANGE', KEYS[2], start, stop - 1)
"""

# Redis's clock in ms as ``ms``: presence expiries are on it, whichever process writes or reads them.
_NOW_MS = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: presence. ARGV: entry, presence ttl ms, key ttl s, channel, join frame.
_JOIN = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 's:' .. ARGV[5])
"""
)

# KEYS: presence. ARGV: entry, channel, leave frame.
_LEAVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 's:' .. ARGV[3])
end
"""

# KEYS: presence, epoch, seq, history. ARGV: presence ttl ms, key ttl s, channel, the room's leave
# frame before and after its member (``_leave_frame_parts``), entries...
# Refreshes this node's members, drops everyone whose heartbeat stopped and announces them.
_HEARTBEAT = (
    _NOW_MS
    + """
for i = 6, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ms + tonumber(ARGV[1]), ARGV[i]) end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
for _, entry in ipairs(expired) do
  if redis.call('ZREM', KEYS[1], entry) == 1 then
    redis.call('PUBLISH', ARGV[3], 's:' .. ARGV[4] .. entry .. ARGV[5])
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return #expired
"""
)

# KEYS: presence. Returns the live entries.
_MEMBERS = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')
"""
)


def _keys(room: str) -> tuple[str, str, str, str]:
    """epoch, seq, history and presence keys of a room."""
    base = "chat:{" + room + "}:"
    return base + "epoch", base + "seq", base + "history", base + "presence"


def _channel(room: str) -> str:
    return "chat:{" + room + "}"


def _room_of(channel: str) -> str:
    """The room of a ``chat:{R}`` channel."""
    return channel[len("chat:{") : -1]


_NOBODY = Member("", "")  # a room's JSON never holds it (ROOM_PATTERN): it marks where the member goes


def _leave_frame_parts(room: str) -> tuple[str, str]:
    """The room's leave frame (``Signal.frame``) before and after its member's JSON, for the heartbeat script."""
    head, _, tail = Signal("leave", room, _NOBODY).frame.partition(_NOBODY.json)
    return head, tail


def _new_epoch() -> str:
    return secrets.token_urlsafe(9)


@dataclass(slots=True)
class _Publish:
    """A publish on its way: the message without its seq, the future its caller awaits, and its ``done``."""

    room: str
    sender: Member
    text: str
    ts: int
    head: str  # the frame is head + seq + tail
    tail: str
    future: asyncio.Future[Message]
    done: PublishDone | None

    def settle(self, reply: Any) -> None:
        """Resolve the future from the script's reply (``[seq, epoch]``) or an error, and call ``done``."""
        future = self.future
        if future.done():
            pass  # its caller cancelled it
        elif isinstance(reply, BaseException):
            error = Unavailable(UNAVAILABLE)
            if not isinstance(reply, Unavailable):
                error.__cause__ = reply
            future.set_exception(error)
        else:
            seq = int(reply[0])
            frame = f"{self.head}{seq}{self.tail}"
            future.set_result(Message.with_frame(self.room, seq, self.sender, self.text, self.ts, frame))
        if self.done is not None:
            try:
                self.done(future)
            except Exception:
                logger.exception("a publish's done callback failed")


def _fail(publishes: list[_Publish]) -> None:
    for publish in publishes:
        publish.settle(Unavailable(UNAVAILABLE))


@dataclass
class _Cursor:
    """The last seq this process delivered in a room, under which epoch."""

    epoch: str
    seq: int


class RedisBackend(Backend):
    """Rooms shared by every process on one Redis; see the module docstring for the layout."""

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
        self._publish = self._redis.register_script(_PUBLISH)
        self._snapshot = self._redis.register_script(_SNAPSHOT)
        self._history = self._redis.register_script(_HISTORY)
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._members = self._redis.register_script(_MEMBERS)
        self._deliver: Deliver | None = None
        self._subscribed: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._local: dict[str, dict[str, str]] = {}  # room -> member id -> presence entry
        self._pubsub: Any = None
        self._link_up = False
        self._link_was_up = False  # the current link got as far as subscribing
        self._link_ready = anyio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._publishes: list[_Publish] = []  # started, not yet sent
        self._publisher: asyncio.Task[None] | None = None  # redis-py pipelines (no Link)
        self._use_link = link_supported(url)
        self._link: Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._send_scheduled = False
        # Sent whole (EVAL): a Redis that restarted never says NOSCRIPT. In RESP once; each publish adds its args.
        self._eval_publish = bulk_strings((b"EVAL", _PUBLISH.encode(), b"3"))
        self.listener_restarts = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Start the listener and heartbeats; wait briefly for the pub/sub link, but serve without it."""
        self._deliver = deliver
        self._link_ready = anyio.Event()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="chat-redis")
        with anyio.move_on_after(STARTUP_WAIT):
            await self._link_ready.wait()
        if not self._link_up:
            logger.warning("redis at %s not reachable yet; serving degraded until it is", _safe_url(self.url))
            self.state_changed(False)

    async def stop(self) -> None:
        for task in (self._publisher, self._connecting):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        link, self._link = self._link, None
        if link is not None:
            link.close()  # fails the publishes waiting for their replies
        _fail(self._publishes)  # a publisher cancelled before it ran failed nothing
        self._publishes = []
        runner, self._runner = self._runner, None
        self._pubsub = None  # closing below; members leaving meanwhile must not use the half-closed link
        self._link_up = False  # stopping on purpose is not the backend going down
        if runner is not None:
            runner.cancel()
            with suppress(asyncio.CancelledError):
                await runner
        with suppress(RedisError, OSError):
            await self._redis.aclose()
            await self._subscriber.aclose()
        self._deliver = None

    async def healthy(self) -> bool:
        if not self._link_up:
            return False
        try:
            with anyio.fail_after(1.0):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    # --- rooms -------------------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)
        confirmed = self._confirmed[room] = anyio.Event()
        try:
            with unavailable("backend unavailable: cannot subscribe"), anyio.fail_after(SUBSCRIBE_TIMEOUT):
                if self._pubsub is not None:
                    await self._pubsub.subscribe(_channel(room))
                await confirmed.wait()
        except Unavailable:
            await self.unsubscribe(room)
            raise

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)
        self._cursors.pop(room, None)
        self._confirmed.pop(room, None)
        if self._pubsub is not None:
            with suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(_channel(room))

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        return await self.start_publish(room, sender, text)

    async def signal(self, signal: Signal) -> None:
        with unavailable():
            await self._redis.publish(_channel(signal.room), "s:" + signal.frame)

    async def join(self, room: str, member: Member) -> None:
        entry = member.json  # a presence entry is the member's JSON
        presence = _keys(room)[3]
        frame = Signal("join", room, member).frame
        await self._call(self._join, [presence], [entry, self._presence_ms, self._ttl, _channel(room), frame])
        self._local.setdefault(room, {})[member.id] = entry

    async def leave(self, room: str, member: Member) -> None:
        local = self._local.get(room, {})
        entry = local.pop(member.id, None) or member.json
        if not local:
            self._local.pop(room, None)
        frame = Signal("leave", room, member).frame
        await self._call(self._leave, [_keys(room)[3]], [entry, _channel(room), frame])

    async def remove(self, room: str, member_id: str) -> None:
        with unavailable():
            await self._redis.publish(_channel(room), "r:" + member_id)

    async def rooms(self) -> list[RoomSummary]:
        with unavailable():
            keys = {key async for key in self._redis.scan_iter("chat:{*}:epoch", ROOM_SCAN_BATCH)}  # SCAN may repeat
            rooms = sorted(_room_of(key.removesuffix(":epoch")) for key in keys)
            now_ms = time.time_ns() // 1_000_000
            async with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.zcount(_keys(room)[3], now_ms, "+inf")
                counts = await pipe.execute()
        return [RoomSummary(room, int(count)) for room, count in zip(rooms, counts, strict=True)]

    async def exists(self, room: str) -> bool:
        with unavailable():
            return bool(await self._redis.exists(_keys(room)[0]))

    async def members(self, room: str) -> list[Member]:
        entries = await self._call(self._members, [_keys(room)[3]], [])
        return [Member.from_json(entry) for entry in entries]

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        return await self._read_snapshot(room, since, epoch, self.settings.history_on_join)

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        _, seq_key, history_key, _ = _keys(room)
        frames = await self._call(self._history, [seq_key, history_key], [-1 if before is None else before, limit])
        return [Message.from_frame(frame) for frame in frames]

    # --- internals ---------------------------------------------------------------------------

    @property
    def _ttl(self) -> int:
        return max(1, int(self.settings.history_ttl))

    @property
    def _presence_ms(self) -> int:
        return int(self.settings.presence_ttl * 1000)

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[object]) -> Any:
        with unavailable():
            return await script(keys=list(keys), args=list(args))

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        ts = time.time_ns() // 1_000_000
        head, tail = message_frame_parts(room, sender, text, ts)
        loop = asyncio.get_running_loop()
        publish = _Publish(room, sender, text, ts, head, tail, loop.create_future(), done)
        self._publishes.append(publish)
        if self._use_link:
            if not self._send_scheduled:
                self._send_scheduled = True
                loop.call_soon(self._send_publishes)  # once this turn's publishes are all started
        elif self._publisher is None:
            self._publisher = loop.create_task(self._publish_queued(), name="chat-redis-publish")
        return publish.future

    def _send_publishes(self) -> None:
        """Write what was started as one batch on the link (connecting it first if it is down)."""
        self._send_scheduled = False
        if not self._publishes:
            return
        link = self._link
        if link is None or link.closed:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="chat-redis-link")
            return
        batch, self._publishes = self._publishes, []
        eval_publish = self._eval_publish  # the array header counts its 3 bulk strings and the args
        commands = [
            b"*%d\r\n" % (3 + len(args)) + eval_publish + bulk_strings(args) for args in self._script_args(batch)
        ]
        link.send(b"".join(commands), batch)

    def _script_args(self, batch: list[_Publish]) -> list[tuple[bytes, ...]]:
        """The publish script's KEYS and ARGV for each publish of a batch, encoded, as both publish paths send them.

        KEYS: epoch, seq, history. ARGV: a fresh epoch (used only by a room Redis does not know; the
        batch shares one), TTL, frame head and tail, history size, channel.
        """
        epoch, ttl, size = _new_epoch().encode(), str(self._ttl).encode(), str(self.settings.history_size).encode()
        args: list[tuple[bytes, ...]] = []
        for publish in batch:
            room = publish.room
            epoch_key, seq_key, history_key, _ = _keys(room)
            args.append(
                (
                    epoch_key.encode(),
                    seq_key.encode(),
                    history_key.encode(),
                    epoch,
                    ttl,
                    publish.head.encode(),
                    publish.tail.encode(),
                    size,
                    _channel(room).encode(),
                )
            )
        return args

    async def _connect(self) -> None:
        """Open the publish link and send what waits; if Redis cannot be reached, those publishes fail."""
        try:
            self._link = await Link.open(self.url, CONNECT_TIMEOUT, REPLY_TIMEOUT)
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError | LinkLost):
                logger.debug("redis publish link not connected: %s", exc)
            else:
                logger.exception("redis publish link failed")
            failed, self._publishes = self._publishes, []
            _fail(failed)
            return
        finally:
            self._connecting = None
        self._send_publishes()

    async def _publish_queued(self) -> None:
        """Send what queued as one pipeline, wait for its replies, repeat; one pipeline at a time keeps order."""
        try:
            while self._publishes:
                batch, self._publishes = self._publishes, []
                try:
                    replies = await self._run_publishes(batch)
                except (RedisError, OSError) as exc:
                    replies = [exc] * len(batch)
                except Exception as exc:
                    logger.exception("redis publish failed")
                    replies = [exc] * len(batch)
                except BaseException:  # cancelled (the backend stops): nobody may wait forever
                    _fail(batch)
                    raise
                for publish, reply in zip(batch, replies, strict=True):
                    publish.settle(reply)
        finally:
            self._publisher = None
            _fail(self._publishes)
            self._publishes = []

    async def _run_publishes(self, batch: list[_Publish]) -> list[Any]:
        """One round trip; a script Redis lost (it restarted) is loaded again and those publishes sent again."""
        replies = await self._pipeline(batch)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # NOSCRIPT: those did not run
            self._publish.sha = await self._redis.script_load(self._publish.script)
            again = await self._pipeline([batch[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def _pipeline(self, batch: list[_Publish]) -> list[Any]:
        sha = self._publish.sha
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in self._script_args(batch):
                pipe.execute_command("EVALSHA", sha, 3, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _read_snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        keys = list(_keys(room)[:3])
        args = [_new_epoch(), self._ttl, -1 if since is None else since, epoch or "", count]
        reply = await self._call(self._snapshot, keys, args)
        seq, room_epoch, recovered, *frames = reply
        return Snapshot(int(seq), str(room_epoch), [Message.from_frame(f) for f in frames], recovered == 1)

    async def _run(self) -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._listen_forever)
            task_group.start_soon(self._heartbeat_forever)

    async def _listen_forever(self) -> None:
        """Keep one pub/sub link up, whatever happens to it; never give up, never die silently."""
        delay = BACKOFF_FIRST
        while True:
            try:
                await self._listen()
            except (RedisError, OSError, Unavailable) as exc:
                if self._link_up:
                    logger.warning("redis pub/sub link lost: %s; reconnecting", exc)
            except Exception:
                logger.exception("redis pub/sub listener failed; restarting it")
            finally:
                if self._link_up:
                    self.state_changed(False)
                self._link_up = False
                self._pubsub = None
            self.listener_restarts += 1
            await anyio.sleep(delay)
            delay = BACKOFF_FIRST if self._link_was_up else min(delay * 2, BACKOFF_MAX)

    async def _listen(self) -> None:
        pubsub = self._subscriber.pubsub()
        self._link_was_up = False
        try:
            rooms = set(self._subscribed)
            await pubsub.subscribe(CONTROL_CHANNEL, *(_channel(room) for room in rooms))
            self._pubsub = pubsub
            joined_meanwhile = self._subscribed - rooms
            if joined_meanwhile:
                await pubsub.subscribe(*(_channel(room) for room in joined_meanwhile))
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
                self._link_up = self._link_was_up = True
                self._link_ready.set()
                logger.info("redis pub/sub link up (%d rooms)", len(self._subscribed))
                self.state_changed(True)
            else:
                await self._sync(_room_of(channel))
        elif kind == "message" and channel != CONTROL_CHANNEL:
            await self._receive(_room_of(channel), data)

    async def _sync(self, room: str) -> None:
        """A (re)subscription is confirmed: learn the room's position, delivering what was missed."""
        if room not in self._subscribed:
            return
        cursor = self._cursors.get(room)
        if cursor is None:
            snapshot = await self._read_snapshot(room, None, None, 0)
            self._cursors[room] = _Cursor(snapshot.epoch, snapshot.seq)
        else:
            await self._catch_up(room, cursor)
        confirmed = self._confirmed.get(room)
        if confirmed is not None:
            confirmed.set()

    async def _receive(self, room: str, data: str) -> None:
        cursor = self._cursors.get(room)
        if cursor is None or self._deliver is None:
            return  # not (or no longer) subscribed here
        if data.startswith("s:"):
            self._deliver(Signal.from_frame(data[2:]))
            return
        if data.startswith("r:"):
            self._deliver(Remove(room, data[2:]))
            return
        _, epoch, frame = data.split(":", 2)
        message = Message.from_frame(frame)
        if epoch != cursor.epoch or message.seq > cursor.seq + 1:
            await self._catch_up(room, cursor)
        if epoch == cursor.epoch and message.seq == cursor.seq + 1:
            cursor.seq = message.seq
            self._deliver(message)

    async def _catch_up(self, room: str, cursor: _Cursor) -> None:
        """Deliver everything after the cursor from history, or restart the room if that is gone."""
        snapshot = await self._read_snapshot(room, cursor.seq, cursor.epoch, 0)
        deliver = self._deliver
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

    async def _heartbeat_forever(self) -> None:
        """Keep this node's members present and its rooms alive; reap members of dead nodes."""
        interval = max(0.2, self.settings.presence_ttl / 3)
        while True:
            await anyio.sleep(interval)
            for room, local in list(self._local.items()):
                epoch_key, seq_key, history_key, presence_key = _keys(room)
                keys = [presence_key, epoch_key, seq_key, history_key]
                args: list[str | int] = [self._presence_ms, self._ttl, _channel(room), *_leave_frame_parts(room)]
                args.extend(local.values())
                try:
                    await self._heartbeat(keys=keys, args=args)
                except (RedisError, OSError) as exc:
                    logger.debug("heartbeat of %s skipped: %s", room, exc)
                    break


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
