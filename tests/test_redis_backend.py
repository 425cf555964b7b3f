"""The Redis backend as two nodes in one process see it, while Redis is killed, frozen and emptied."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest

from chat.backends.redis import RedisBackend
from chat.backends.redis.publisher import LinkPublisher, PipelinePublisher
from chat.exceptions import Unavailable
from chat.protocol import Member, Message, Present, Restart, Signal
from chat.settings import Settings
from tests.redis_server import RedisServer
from tests.standins import Changes, Delivered

pytestmark = pytest.mark.anyio

ROOM = "lobby"


class Node(Delivered):
    """One process's backend and every event it delivered, with a way to wait for a condition."""

    def __init__(self, url: str, **settings: float) -> None:
        super().__init__()
        self.backend = RedisBackend(url, Settings(backend=url, **settings))  # type: ignore[arg-type]


@asynccontextmanager
async def nodes(url: str, count: int = 2, **settings: float) -> AsyncIterator[list[Node]]:
    """``count`` started nodes, each subscribed to ROOM."""
    started = [Node(url, **settings) for _ in range(count)]
    for node in started:
        await node.backend.start(node.deliver)
    try:
        for node in started:
            with anyio.fail_after(10):
                await node.backend.subscribe(ROOM)  # waits for the pub/sub link if it is still connecting
        yield started
    finally:
        for node in started:
            await node.backend.stop()


async def publish_until(node: Node, member: Member, stop: anyio.Event, acked: list[int]) -> None:
    """Publish steadily until ``stop``; record the seq of every publish Redis acknowledged."""
    count = 0
    while not stop.is_set():
        count += 1
        try:
            message = await node.backend.publish(ROOM, member, f"{member.name} {count}")
            acked.append(message.seq)
        except Unavailable:
            pass
        await anyio.sleep(0.01)  # pacing, not synchronisation


@asynccontextmanager
async def publishing(a: Node, b: Node) -> AsyncIterator[list[int]]:
    """Both nodes publish steadily; the block runs once ``a`` delivered 20, and publishing stops when it ends.

    Yields the seqs Redis acknowledged, filled in as the publishes are answered.
    """
    stop, acked = anyio.Event(), list[int]()
    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_until, a, Member("m1", "ann"), stop, acked)
        tg.start_soon(publish_until, b, Member("m2", "bob"), stop, acked)
        await a.wait_until(lambda: len(a.seqs()) >= 20)
        yield acked
        stop.set()


async def assert_every_ack_arrived(nodes: tuple[Node, ...], acked: list[int]) -> None:
    """Every node delivers up to the last acked seq, and delivered each seq from 1 once, in order."""
    for node in nodes:
        await node.wait_until(lambda node=node: max(node.seqs()) >= max(acked))  # type: ignore[misc]
        assert node.seqs() == list(range(1, max(node.seqs()) + 1))


async def test_message_published_on_one_node_reaches_the_other(redis_server: RedisServer) -> None:
    """A message published through node A is delivered by node B with the same seq and frame."""
    async with nodes(redis_server.url) as (a, b):
        sent = await a.backend.publish(ROOM, Member("m1", "ann"), "hello")
        await b.wait_until(lambda: len(b.seqs()) == 1)
        received = b.events[-1]
        assert isinstance(received, Message)
        assert (received.seq, received.frame) == (sent.seq, sent.frame)


async def test_seq_is_shared_across_nodes(redis_server: RedisServer) -> None:
    """Publishes from both nodes get one gap-free sequence, delivered in order everywhere."""
    async with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            for node, name in ((a, "ann"), (b, "bob")):
                for i in range(50):
                    tg.start_soon(node.backend.publish, ROOM, Member(name, name), f"{name} {i}")
        for node in (a, b):
            await node.wait_until(lambda node=node: len(node.seqs()) == 100)  # type: ignore[misc]
            assert node.seqs() == list(range(1, 101))


async def test_presence_and_signals_cross_nodes(redis_server: RedisServer) -> None:
    """A join on node A is in node B's member list, and B delivers the join signal."""
    async with nodes(redis_server.url) as (a, b):
        await a.backend.join(ROOM, Member("m1", "ann"))
        await b.wait_until(lambda: any(isinstance(e, Signal) and e.kind == "join" for e in b.events))
        assert await b.backend.members(ROOM) == [Member("m1", "ann")]
        await a.backend.leave(ROOM, Member("m1", "ann"))
        await b.wait_until(lambda: any(isinstance(e, Signal) and e.kind == "leave" for e in b.events))
        assert await b.backend.members(ROOM) == []


async def test_members_of_a_dead_node_expire(redis_server: RedisServer) -> None:
    """A node that stops without leaving has its members dropped, and announced, within the TTL."""
    async with nodes(redis_server.url, presence_ttl=1.0) as (a, b):
        await b.backend.join(ROOM, Member("m2", "bob"))
        await a.backend.join(ROOM, Member("m1", "ann"))
        await b.backend.stop()  # dies: no leave, no more heartbeats
        await a.wait_until(lambda: any(isinstance(e, Signal) and e.kind == "leave" for e in a.events), within=5)
        assert await a.backend.members(ROOM) == [Member("m1", "ann")]


async def test_recovery_snapshot_works_from_another_node(redis_server: RedisServer) -> None:
    """A member who saw seq 1 on node A recovers 2 and 3 through node B."""
    async with nodes(redis_server.url) as (a, b):
        first = await a.backend.publish(ROOM, Member("m1", "ann"), "one")
        epoch = (await a.backend.snapshot(ROOM, None, None)).epoch
        await a.backend.publish(ROOM, Member("m1", "ann"), "two")
        await a.backend.publish(ROOM, Member("m1", "ann"), "three")
        snapshot = await b.backend.snapshot(ROOM, first.seq, epoch)
        assert snapshot.recovered
        assert [m.text for m in snapshot.messages] == ["two", "three"]


async def test_pubsub_links_killed_mid_stream_lose_nothing(redis_server: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub while both nodes publish: every acked message arrives once, in order."""
    async with nodes(redis_server.url) as (a, b):
        async with publishing(a, b) as acked:
            assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == "2"
            await a.wait_until(lambda: len(a.seqs()) >= 60)
            await b.wait_until(lambda: len(b.seqs()) >= 60)
        await assert_every_ack_arrived((a, b), acked)
        assert a.backend.listener_restarts >= 1


async def test_a_dropped_link_delivers_the_rooms_members_for_joins_it_missed(redis_server: RedisServer) -> None:
    """A join made while a node's pub/sub link is down reaches that node, after the link is back, as ``Present``
    (the room's members as Redis lists them), which the registry compares with the room's list."""
    carol = Member("c3", "carol")
    async with nodes(redis_server.url) as (a, b):
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == "2"
        await b.backend.join(ROOM, carol)

        def carol_present() -> bool:
            return any(isinstance(event, Present) and carol in event.members for event in a.events)

        await a.wait_until(carol_present)


async def test_frozen_redis_loses_nothing(redis_server: RedisServer) -> None:
    """Redis stopped for 3 s (SIGSTOP) while both nodes publish: every acked message arrives once, in order."""
    async with nodes(redis_server.url) as (a, b):
        async with publishing(a, b) as acked:
            redis_server.freeze()
            await anyio.sleep(3)  # the fault itself lasts 3 s
            assert not await a.backend.healthy()
            redis_server.thaw()
            before = len(acked)
            await a.wait_until(lambda: len(acked) >= before + 20, within=10)
        await assert_every_ack_arrived((a, b), acked)


async def test_redis_restarted_empty_restarts_the_room(redis_server: RedisServer) -> None:
    """Redis killed and restarted empty: publishes fail meanwhile, then every node restarts the room."""
    async with nodes(redis_server.url) as (a, b):
        await a.backend.publish(ROOM, Member("m1", "ann"), "before")
        old_epoch = (await a.backend.snapshot(ROOM, None, None)).epoch
        await b.wait_until(lambda: b.seqs() == [1])
        redis_server.kill()
        with pytest.raises(Unavailable):
            await a.backend.publish(ROOM, Member("m1", "ann"), "during")
        assert not await a.backend.healthy()
        redis_server.start()
        for node in (a, b):
            await node.wait_until(lambda node=node: any(isinstance(e, Restart) for e in node.events), 5)  # type: ignore[misc]
        assert await a.backend.healthy()  # the link that delivered the restart is up
        after = await a.backend.publish(ROOM, Member("m1", "ann"), "after")
        assert after.seq == 1
        restart = next(e for e in b.events if isinstance(e, Restart))
        assert restart.epoch != old_epoch
        await b.wait_until(lambda: b.seqs()[-1:] == [1] and len(b.seqs()) == 2)


class Writes:
    """How many publishes each write to Redis carried (each link write, or each pipeline), in order."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._changes = Changes()

    def record(self, size: int) -> None:
        self.sizes.append(size)
        self._changes.changed()

    async def wait(self, count: int) -> None:
        """Until ``count`` writes were made."""
        await self._changes.wait_until(lambda: len(self.sizes) >= count, 5)


def choose_publisher(backend: RedisBackend, use_link: bool) -> None:
    """Publish on the backend's own link (its choice for redis://), or on redis-py pipelines as without hiredis."""
    if not use_link:
        backend._publisher = PipelinePublisher(backend._redis, backend.settings)
    assert isinstance(backend._publisher, LinkPublisher if use_link else PipelinePublisher)


@asynccontextmanager
async def counted_writes(backend: RedisBackend, use_link: bool) -> AsyncIterator[Writes]:
    """Count the publishes of each write to Redis from here on.

    With ``use_link`` the backend publishes on its own link (opened here by a first publish, seq 1);
    otherwise on redis-py pipelines, as it does without hiredis or for rediss://.
    """
    choose_publisher(backend, use_link)
    await backend.publish(ROOM, Member("m1", "ann"), "first")
    writes = Writes()
    publisher = backend._publisher
    if isinstance(publisher, LinkPublisher):
        link = publisher._link
        assert link is not None
        send = link.send

        def counted_send(data: bytes, waiters: Any) -> None:
            send(data, waiters)
            writes.record(len(waiters))

        link.send = counted_send  # type: ignore[method-assign]
    else:
        assert isinstance(publisher, PipelinePublisher)
        pipeline = publisher._pipeline

        async def counted_pipeline(batch: list[Any]) -> list[Any]:
            writes.record(len(batch))
            return await pipeline(batch)

        publisher._pipeline = counted_pipeline  # type: ignore[method-assign]
    yield writes


@contextmanager
def frozen(redis_server: RedisServer) -> Iterator[None]:
    """Redis answers nothing inside the block (SIGSTOP), and runs again after it."""
    redis_server.freeze()
    try:
        yield
    finally:
        redis_server.thaw()


@pytest.mark.parametrize("use_link", [True, False], ids=["link", "pipeline"])
async def test_publishes_on_their_way_fail_when_the_backend_stops(redis_server: RedisServer, use_link: bool) -> None:
    """Stopping with publishes started but not sent, or sent and not answered, fails them: nobody waits forever."""
    async with nodes(redis_server.url, count=1) as (node,):
        choose_publisher(node.backend, use_link)
        queued = [node.backend.start_publish(ROOM, Member("m1", "ann"), f"m{index}") for index in range(3)]
        await node.backend.stop()
    for future in queued:
        with anyio.fail_after(5), pytest.raises(Unavailable):
            await future

    failed: list[BaseException | None] = []
    async with nodes(redis_server.url, count=1) as (node,), counted_writes(node.backend, use_link) as writes:
        with frozen(redis_server):
            in_flight = [
                node.backend.start_publish(ROOM, Member("m1", "ann"), f"s{i}", lambda f: failed.append(f.exception()))
                for i in range(3)
            ]
            await writes.wait(1)  # the three are sent, waiting for their replies
            await node.backend.stop()
            assert [type(error) for error in failed] == [Unavailable] * 3  # done was told, at once
            for future in in_flight:
                with anyio.fail_after(1), pytest.raises(Unavailable):
                    await future


@pytest.mark.parametrize("use_link", [True, False], ids=["link", "pipeline"])
async def test_publishes_of_one_turn_share_a_write(redis_server: RedisServer, use_link: bool) -> None:
    """Publishes started in one turn go in one write, and keep their order with those started later.

    On the link, later ones are written while the earlier ones still wait for their replies (Redis
    is frozen meanwhile); a redis-py pipeline waits for the one before it.
    """
    async with nodes(redis_server.url, count=1) as (node,), counted_writes(node.backend, use_link) as writes:
        with frozen(redis_server):
            first = [node.backend.start_publish(ROOM, Member("m1", "ann"), f"a{index}") for index in range(5)]
            await writes.wait(1)  # the first five are on their way
            second = [node.backend.start_publish(ROOM, Member("m1", "ann"), f"b{index}") for index in range(5)]
            if use_link:
                await writes.wait(2)  # sent although nothing was answered
        seqs = [(await future).seq for future in first + second]
        assert seqs == list(range(2, 12))
        assert writes.sizes == [5, 5]
        await node.wait_until(lambda: node.seqs() == list(range(1, 12)))
