"""The publish path's connection (``chat.backends.redis.link.Link``) against a real redis-server, asyncio and uvloop."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import hiredis
import pytest

from chat.backends.redis.link import Link, LinkLost, command, link_supported
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

WAIT = 5.0


@pytest.fixture(
    params=[pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Both loops the server runs on: uvicorn picks uvloop when it is installed."""
    return request.param


class Replies:
    """Waiters that keep what they were settled with, in order."""

    def __init__(self, count: int) -> None:
        self.values: list[object] = []
        self._all = anyio.Event()
        self._count = count

    def waiter(self) -> Any:
        replies = self

        class Waiter:
            def settle(self, reply: object) -> None:
                replies.values.append(reply)
                if len(replies.values) == replies._count:
                    replies._all.set()

        return Waiter()

    async def wait(self, within: float = WAIT) -> list[object]:
        with anyio.fail_after(within):
            await self._all.wait()
        return self.values


async def run(link: Link, *commands: tuple[bytes, ...]) -> list[object]:
    """Send ``commands`` in one write and return their replies."""
    replies = Replies(len(commands))
    link.send(b"".join(command(*args) for args in commands), [replies.waiter() for _ in commands])
    return await replies.wait()


async def test_commands_of_one_write_are_answered_in_order(redis_server: RedisServer) -> None:
    """Replies settle their waiters in the order the commands were written, errors included."""
    link = await Link.open(redis_server.url, WAIT, WAIT)
    try:
        values = await run(link, (b"SET", b"k", b"1"), (b"INCR", b"k"), (b"HGET", b"k", b"f"), (b"GET", b"k"))
        assert values[:2] == [b"OK", 2]
        assert isinstance(values[2], hiredis.ReplyError)
        assert "WRONGTYPE" in str(values[2])
        assert values[3] == b"2"
        # A second batch written before the first is answered still comes back in order.
        first, second = Replies(1), Replies(1)
        link.send(command(b"INCR", b"k"), [first.waiter()])
        link.send(command(b"INCR", b"k"), [second.waiter()])
        assert await first.wait() == [3]
        assert await second.wait() == [4]
    finally:
        link.close()


async def test_url_user_password_and_database_are_used(redis_server: RedisServer) -> None:
    """AUTH with the URL's user and password, SELECT its database; a wrong password is refused on open."""
    redis_server.command("ACL", "SETUSER", "alice", "on", ">pa:ss", "~*", "+@all")
    link = await Link.open(f"redis://alice:pa%3Ass@127.0.0.1:{redis_server.port}/3", WAIT, WAIT)
    try:
        assert await run(link, (b"ACL", b"WHOAMI"), (b"SET", b"where", b"db3")) == [b"alice", b"OK"]
    finally:
        link.close()
    assert redis_server.command("-n", "3", "GET", "where") == "db3"
    link = await Link.open(f"redis://alice:pa%3Ass@127.0.0.1:{redis_server.port}?db=4", WAIT, WAIT)
    link.close()
    with pytest.raises(LinkLost, match="refused"):
        await Link.open(f"redis://alice:wrong@127.0.0.1:{redis_server.port}/0", WAIT, WAIT)


async def test_unreachable_redis_fails_to_open(redis_server: RedisServer) -> None:
    """Nobody listening: open raises at once (the backend fails the publishes that waited for it)."""
    url = redis_server.url
    redis_server.kill()
    with pytest.raises(ConnectionRefusedError):
        await Link.open(url, WAIT, WAIT)


async def test_frozen_redis_fails_waiters_after_the_reply_timeout(redis_server: RedisServer) -> None:
    """A Redis that answers nothing (SIGSTOP) fails what waits once the oldest waited reply_timeout."""
    link = await Link.open(redis_server.url, WAIT, 0.3)
    redis_server.freeze()
    try:
        replies = Replies(2)
        link.send(command(b"PING") + command(b"PING"), [replies.waiter(), replies.waiter()])
        values = await replies.wait()
        assert all(isinstance(value, LinkLost) and "in time" in str(value) for value in values)
        assert link.closed
        late = Replies(1)
        link.send(command(b"PING"), [late.waiter()])  # a closed link fails at once
        assert isinstance((await late.wait())[0], LinkLost)
    finally:
        redis_server.thaw()


async def test_killed_redis_fails_waiters(redis_server: RedisServer) -> None:
    """Redis dying with commands unanswered: every waiter gets LinkLost, and the link says it is closed."""
    link = await Link.open(redis_server.url, WAIT, WAIT)
    redis_server.freeze()  # the commands stay unanswered until the process dies
    replies = Replies(3)
    link.send(command(b"PING") * 3, [replies.waiter() for _ in range(3)])
    redis_server.kill()
    values = await replies.wait()
    assert all(isinstance(value, LinkLost) for value in values)
    assert link.closed


async def test_close_fails_waiters_at_once(redis_server: RedisServer) -> None:
    """Closing (the backend stops) fails what still waits, without waiting for Redis."""
    link = await Link.open(redis_server.url, WAIT, WAIT)
    redis_server.freeze()
    try:
        replies = Replies(1)
        link.send(command(b"PING"), [replies.waiter()])
        link.close()
        assert isinstance((await replies.wait(within=0.5))[0], LinkLost)
    finally:
        redis_server.thaw()


def test_only_plain_redis_urls_use_the_link() -> None:
    """rediss:// (TLS) and unix:// stay on redis-py's pipelines."""
    assert link_supported("redis://127.0.0.1:6379/0")
    assert not link_supported("rediss://127.0.0.1:6379/0")
    assert not link_supported("unix:///tmp/redis.sock")


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    """What goes on the wire, byte for byte."""
    assert command(b"SET", b"k", b"\xe2\x9c\x93") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\xe2\x9c\x93\r\n"


async def test_loop_is_the_one_asked_for(anyio_backend: Any) -> None:
    """The parametrized loop really runs (uvloop's loop class is not asyncio's)."""
    uses_uvloop = anyio_backend[1].get("use_uvloop", False)
    assert ("uvloop" in type(asyncio.get_running_loop()).__module__) == uses_uvloop
