"""The publish path: the publishes started in one event-loop turn go to Redis together, in order.

Each publish runs the publish script (``scripts.PUBLISH``): next seq, append to history, publish.
``LinkPublisher`` writes a batch on a connection of its own (``link.Link``) without waiting for the
replies to earlier ones; ``PipelinePublisher`` (no hiredis, ``rediss://``, ``unix://``) sends it as
a redis-py pipeline, one round trip at a time. Redis answers a connection's commands in order, so
seqs follow the order publishes were started.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from chat.backends.base import PublishDone
from chat.backends.redis.errors import UNAVAILABLE
from chat.backends.redis.link import Link, LinkLost, bulk_strings
from chat.backends.redis.scripts import PUBLISH, key_ttl, new_epoch, room_channel, room_keys
from chat.exceptions import Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings

logger = logging.getLogger("chat.redis")


@dataclass(slots=True)
class Publish:
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


def _fail(publishes: list[Publish]) -> None:
    """Settle every one of ``publishes`` with ``Unavailable``."""
    for publish in publishes:
        publish.settle(Unavailable(UNAVAILABLE))


async def cancel_task(task: asyncio.Task[None] | None) -> None:
    """Cancel the task, if there is one, and wait until it ended."""
    if task is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


class Publisher(abc.ABC):
    """Sends publishes in batches: append a publish to ``queued``, then call ``send_soon`` unless ``scheduled``.

    (Not one method to call: starting a publish costs no call of its own, only the batch does.)
    """

    def __init__(self, settings: Settings) -> None:
        self.queued: list[Publish] = []  # started, not yet sent
        self.scheduled = False  # a send is coming that takes whatever is queued by then
        self._ttl = str(key_ttl(settings)).encode()
        self._history_size = str(settings.history_size).encode()

    @abc.abstractmethod
    def send_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arrange for what is queued to be sent, with the publishes started later this turn; set ``scheduled``."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Fail every publish queued or waiting for its reply: nobody may wait forever."""

    def _fail_queued(self) -> None:
        failed, self.queued = self.queued, []
        _fail(failed)

    def _script_args(self, batch: list[Publish]) -> list[tuple[bytes, ...]]:
        """The publish script's KEYS and ARGV for each publish of a batch, encoded, as both publish paths send them.

        KEYS: epoch, seq, history. ARGV: a fresh epoch (used only by a room Redis does not know; the
        batch shares one), TTL, frame head and tail, history size, channel.
        """
        epoch, ttl, size = new_epoch().encode(), self._ttl, self._history_size
        args: list[tuple[bytes, ...]] = []
        for publish in batch:
            room = publish.room
            epoch_key, seq_key, history_key, _ = room_keys(room)
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
                    room_channel(room).encode(),
                )
            )
        return args


class LinkPublisher(Publisher):
    """A batch is one write on a connection of its own, sent without waiting for the replies to earlier ones."""

    def __init__(self, url: str, settings: Settings, connect_timeout: float, reply_timeout: float) -> None:
        super().__init__(settings)
        self._url = url
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._link: Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Sent whole (EVAL): a Redis that restarted never says NOSCRIPT. In RESP once; each publish adds its args.
        self._eval_publish = bulk_strings((b"EVAL", PUBLISH.encode(), b"3"))

    def send_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self.scheduled = True
        loop.call_soon(self._send)

    async def stop(self) -> None:
        await cancel_task(self._connecting)
        link, self._link = self._link, None
        if link is not None:
            link.close()  # fails the publishes waiting for their replies
        self._fail_queued()  # those that waited for the link

    def _send(self) -> None:
        """Write what was started as one batch on the link (connecting it first if it is down)."""
        self.scheduled = False
        if not self.queued:
            return
        link = self._link
        if link is None or link.closed:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="chat-redis-link")
            return
        batch, self.queued = self.queued, []
        eval_publish = self._eval_publish  # the array header counts its 3 bulk strings and the args
        commands = [
            b"*%d\r\n" % (3 + len(args)) + eval_publish + bulk_strings(args) for args in self._script_args(batch)
        ]
        link.send(b"".join(commands), batch)

    async def _connect(self) -> None:
        """Open the link and send what waits; if Redis cannot be reached, those publishes fail."""
        try:
            self._link = await Link.open(self._url, self._connect_timeout, self._reply_timeout)
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError | LinkLost):
                logger.debug("redis publish link not connected: %s", exc)
            else:
                logger.exception("redis publish link failed")
            self._fail_queued()
            return
        finally:
            self._connecting = None
        self._send()


class PipelinePublisher(Publisher):
    """A batch is one redis-py pipeline; the next one waits for its replies."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        super().__init__(settings)
        self._redis = redis
        self._script = redis.register_script(PUBLISH)
        self._task: asyncio.Task[None] | None = None

    def send_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self.scheduled = True
        self._task = loop.create_task(self._send_queued(), name="chat-redis-publish")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._fail_queued()  # a task cancelled before it ran failed nothing

    async def _send_queued(self) -> None:
        """Send what queued as one pipeline, wait for its replies, repeat; one pipeline at a time keeps order."""
        try:
            while self.queued:
                batch, self.queued = self.queued, []
                try:
                    replies = await self._run(batch)
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
            self._task = None
            self.scheduled = False
            self._fail_queued()

    async def _run(self, batch: list[Publish]) -> list[Any]:
        """One round trip; a script Redis lost (it restarted) is loaded again and those publishes sent again."""
        replies = await self._pipeline(batch)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # NOSCRIPT: those did not run
            self._script.sha = await self._redis.script_load(self._script.script)
            again = await self._pipeline([batch[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def _pipeline(self, batch: list[Publish]) -> list[Any]:
        sha = self._script.sha
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in self._script_args(batch):
                pipe.execute_command("EVALSHA", sha, 3, *args)
            return list(await pipe.execute(raise_on_error=False))
