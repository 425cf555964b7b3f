"""A lean Redis connection for the publish path: commands written as they come, replies matched in order.

redis-py's pipeline holds its connection until every reply is read, through a stream reader and
the tasks awaiting it: each round trip costs several event-loop turns, and the next pipeline waits
for the last. Here a batch of commands is one ``transport.write``; replies are parsed by hiredis in
``data_received`` and settle their waiters in the same callback, so batches follow each other
without waiting and a reply wakes its publisher one turn after it arrives. Redis answers the
commands of one connection in the order they came, which keeps publishes in order.

Only what publishing needs: plain TCP, ``AUTH`` and ``SELECT`` from a ``redis://`` URL, a deadline
for replies (a Redis that answers nothing for ``reply_timeout`` seconds fails everything waiting,
as redis-py's socket timeout does). Anything else (``rediss://``, ``unix://``, no hiredis) uses
redis-py's pipeline instead (``link_supported``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

try:
    import hiredis
except ImportError:  # pragma: no cover - the redis extra installs it
    hiredis = None  # type: ignore[assignment]


class Waiter(Protocol):
    """Whatever waits for one reply: a reply value, a ``hiredis.ReplyError``, or the error that lost the link."""

    def settle(self, reply: object) -> None: ...


class LinkLost(ConnectionError):
    """The connection closed, failed, or Redis answered nothing in time."""


class Reply:
    """A waiter for a single command's reply (the link's handshake, a ``PING`` behind everything sent)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[object]) -> None:
        self.future = future

    def settle(self, reply: object) -> None:
        if not self.future.done():
            self.future.set_result(reply)


def link_supported(url: str) -> bool:
    """Whether ``url`` can be served by ``Link`` (redis://, with hiredis installed)."""
    return hiredis is not None and urlsplit(url).scheme == "redis"


def command(*args: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulk_strings(args)


def bulk_strings(args: Iterable[bytes]) -> bytes:
    """``args`` in RESP, each a bulk string: a command without its array header (which counts them all)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


class Link(asyncio.Protocol):
    """One Redis connection: ``send`` writes commands and queues their waiters; replies settle them in order."""

    def __init__(self, reply_timeout: float) -> None:
        assert hiredis is not None, "Link needs hiredis (see link_supported)"
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[Waiter, float]] = deque()
        self._reply_timeout = reply_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    @classmethod
    async def open(cls, url: str, connect_timeout: float, reply_timeout: float) -> Link:
        """Connect to ``url``, authenticate and select its database; raise ``LinkLost`` or ``OSError`` if not."""
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        link = cls(reply_timeout)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: link, parts.hostname or "localhost", parts.port or 6379)
                handshake: list[bytes] = []
                if parts.password is not None:
                    user = [unquote(parts.username).encode()] if parts.username else []
                    handshake.append(command(b"AUTH", *user, unquote(parts.password).encode()))
                db = _database(parts.path, parts.query)
                if db:
                    handshake.append(command(b"SELECT", str(db).encode()))
                replies = [Reply(loop.create_future()) for _ in handshake]
                if handshake:
                    link.send(b"".join(handshake), replies)
                for reply in replies:
                    answer = await reply.future
                    if isinstance(answer, Exception):
                        raise LinkLost(f"redis refused the connection: {answer}")
        except BaseException:
            link.close()
            raise
        return link

    def send(self, data: bytes, waiters: Sequence[Waiter]) -> None:
        """Write commands (already in RESP) whose replies ``waiters`` wait for, in order."""
        if self.closed or self._transport is None:
            error = LinkLost("redis link closed")
            for waiter in waiters:
                waiter.settle(error)
            return
        deadline = self._loop.time() + self._reply_timeout
        self._waiting.extend((waiter, deadline) for waiter in waiters)
        self._transport.write(data)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def close(self, reason: str = "redis link closed") -> None:
        """Drop the connection; everything still waiting fails at once."""
        transport = self._transport
        if transport is not None:
            transport.abort()
        self._lost(LinkLost(reason))

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise LinkLost("redis sent a reply nobody asked for")
                waiting.popleft()[0].settle(reply)
        except (hiredis.ProtocolError, LinkLost) as exc:
            self.close(f"redis link broken: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(LinkLost(f"redis link lost: {exc}" if exc else "redis closed the connection"))

    # --- internals ---------------------------------------------------------------------------------

    def _expire(self) -> None:
        """The oldest command waited ``reply_timeout``: give up on the connection; otherwise look again later."""
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.close("redis answered nothing in time")
        else:
            self._timer = self._loop.call_at(deadline, self._expire)

    def _lost(self, error: LinkLost) -> None:
        self.closed = True
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for waiter, _ in waiting:
            waiter.settle(error)


def _database(path: str, query: str) -> int:
    """The database number of a redis:// path (``/2``) or a ``db=`` query parameter (0 if neither)."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "db" and value:
            return int(value)
    number = path.strip("/")
    return int(number) if number else 0
