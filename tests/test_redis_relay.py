"""The Redis backend relaying a store's messages: two nodes on one Redis and one database, while relays
are lost or overtaken and Redis is restarted empty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from chat.backends.base import RoomSummary
from chat.backends.redis import RedisBackend
from chat.backends.redis.relay import LinkRelay, PipelineRelay
from chat.backends.stored import StoredBackend
from chat.protocol import Member, Restart, Signal
from chat.settings import Settings
from tests.memory_store import Database, MemoryStore
from tests.redis_server import RedisServer
from tests.standins import Delivered

pytestmark = pytest.mark.anyio

ROOM = "lobby"
ANN = Member("m1", "ann")
BOB = Member("m2", "bob")


class Node(Delivered):
    """One process: a Redis backend relaying the messages of its store on the shared database."""

    def __init__(self, url: str, database: Database, use_link: bool) -> None:
        super().__init__()
        settings = Settings(backend=url)
        self.redis = RedisBackend(url, settings)
        self.backend = StoredBackend(self.redis, MemoryStore(database, settings))
        if not use_link:  # as without hiredis, or for rediss://
            self.redis._relay = PipelineRelay(self.redis._redis)

    def restarts(self) -> list[Restart]:
        return [event for event in self.events if isinstance(event, Restart)]


@asynccontextmanager
async def nodes(url: str, database: Database, use_link: bool = True) -> AsyncIterator[tuple[Node, Node]]:
    """Two started nodes on one database, each subscribed to ROOM."""
    a, b = Node(url, database, use_link), Node(url, database, use_link)
    for node in (a, b):
        await node.backend.start(node.deliver)
    try:
        for node in (a, b):
            with anyio.fail_after(10):
                await node.backend.subscribe(ROOM)
        yield a, b
    finally:
        for node in (a, b):
            await node.backend.stop()


def joined(node: Node) -> list[Member]:
    """Every member whose join the node delivered, in order."""
    return [event.member for event in node.events if isinstance(event, Signal) and event.kind == "join"]


async def every_node_delivers(seqs: list[int], *among: Node) -> None:
    """Each node delivered exactly ``seqs``, in that order (waiting until it delivered as many)."""
    for node in among:
        await node.wait_until(lambda node=node: len(node.seqs()) >= len(seqs))  # type: ignore[misc]
        assert node.seqs() == seqs


@pytest.mark.parametrize("use_link", [True, False], ids=["link", "pipeline"])
async def test_messages_from_both_nodes_reach_both_in_seq_order(redis_server: RedisServer, use_link: bool) -> None:
    """Publishes from both nodes get one gap-free sequence from the store, delivered in order everywhere."""
    async with nodes(redis_server.url, Database(), use_link) as (a, b):
        assert isinstance(a.redis._relay, LinkRelay if use_link else PipelineRelay)
        async with anyio.create_task_group() as tg:
            for node, sender in ((a, ANN), (b, BOB)):
                for index in range(50):
                    tg.start_soon(node.backend.publish, ROOM, sender, f"{sender.name} {index}")
        await every_node_delivers(list(range(1, 101)), a, b)


async def test_relay_that_never_reached_redis_is_filled_from_the_store(redis_server: RedisServer) -> None:
    """A message committed but never relayed is delivered, from the store, before the next one."""
    database = Database()
    async with nodes(redis_server.url, database) as (a, b):
        database.commit(ROOM, ANN, "never relayed")
        await a.backend.publish(ROOM, ANN, "relayed")
        await every_node_delivers([1, 2], a, b)


async def test_message_that_overtook_an_earlier_one_waits_for_it(redis_server: RedisServer) -> None:
    """Seq 2 reaching Redis before seq 1 (another process's): 1 is filled from the store, the late 1 dropped."""
    database = Database()
    async with nodes(redis_server.url, database) as (a, b):
        first, second = database.commit(ROOM, ANN, "one"), database.commit(ROOM, BOB, "two")
        a.redis.relay(second, database.epoch)
        a.redis.relay(first, database.epoch)
        await a.backend.publish(ROOM, ANN, "three")  # arrives after the late one
        await every_node_delivers([1, 2, 3], a, b)


async def test_relay_lost_on_the_wire_is_sent_again(redis_server: RedisServer) -> None:
    """A relay whose link broke before Redis had it is sent again, though no later message comes."""
    async with nodes(redis_server.url, Database()) as (a, b):
        await a.backend.publish(ROOM, ANN, "opens the relay link")
        await every_node_delivers([1], a, b)
        relay = a.redis._relay
        assert isinstance(relay, LinkRelay)
        link = relay._link
        assert link is not None

        def broken_send(data: bytes, waiters: Any) -> None:  # the write never reaches Redis
            link._waiting.extend((waiter, 0.0) for waiter in waiters)
            link.close("the wire broke")

        link.send = broken_send  # type: ignore[method-assign]
        await a.backend.publish(ROOM, ANN, "lost on the wire")
        await every_node_delivers([1, 2], a, b)


@pytest.mark.parametrize("use_link", [True, False], ids=["link", "pipeline"])
async def test_messages_committed_while_a_node_stops_are_relayed(redis_server: RedisServer, use_link: bool) -> None:
    """A node stopping relays what its store still commits on the way, before it lets go of Redis."""
    async with nodes(redis_server.url, Database(), use_link) as (a, b):
        await a.backend.publish(ROOM, ANN, "opens the relay link")
        await every_node_delivers([1], b)
        on_their_way = [a.backend.start_publish(ROOM, ANN, f"last {index}") for index in range(3)]
        await a.backend.stop()
        assert [future.result().seq for future in on_their_way] == [2, 3, 4]
        await every_node_delivers([1, 2, 3, 4], b)


async def test_redis_restarted_empty_loses_nothing(redis_server: RedisServer) -> None:
    """Redis killed and restarted empty: no restart, every committed message arrives, seqs go on under the epoch."""
    database = Database()
    async with nodes(redis_server.url, database) as (a, b):
        await a.backend.publish(ROOM, ANN, "before")
        await every_node_delivers([1], a, b)
        redis_server.kill()
        assert (await a.backend.publish(ROOM, ANN, "during")).seq == 2  # committed; its relay is lost
        assert (await b.backend.publish(ROOM, BOB, "during")).seq == 3
        assert not await a.backend.healthy()
        redis_server.start()
        await every_node_delivers([1, 2, 3], a, b)  # caught up once the link is back
        assert (await b.backend.publish(ROOM, BOB, "after")).seq == 4
        await every_node_delivers([1, 2, 3, 4], a, b)
        assert (await a.backend.snapshot(ROOM, 1, database.epoch)).recovered
        assert a.restarts() == b.restarts() == []


async def test_members_are_present_again_after_redis_restarted_empty(redis_server: RedisServer) -> None:
    """Each node adds its members back once its link is up again, without announcing them as joining."""
    async with nodes(redis_server.url, Database()) as (a, b):
        await a.backend.join(ROOM, ANN)
        await b.backend.join(ROOM, BOB)
        for node in (a, b):
            await node.wait_until(lambda node=node: BOB in joined(node))  # type: ignore[misc]
        redis_server.restart()
        await b.backend.publish(ROOM, BOB, "after")  # committed while the links may still be down
        await every_node_delivers([1], a, b)  # each link is up again: its members were added back first
        for node in (a, b):
            assert sorted(await node.backend.members(ROOM), key=lambda m: m.id) == [ANN, BOB]
        assert joined(a) == joined(b) == [ANN, BOB]  # from before the restart, not again


async def test_replaced_database_restarts_the_room(redis_server: RedisServer) -> None:
    """A message under another epoch (the database was replaced) restarts the room on every node."""
    database = Database()
    async with nodes(redis_server.url, database) as (a, b):
        await a.backend.publish(ROOM, ANN, "old")
        await every_node_delivers([1], a, b)
        database.replace()
        await a.backend.publish(ROOM, ANN, "new")
        for node in (a, b):
            await node.wait_until(lambda node=node: node.restarts() != [])  # type: ignore[misc]
            assert node.restarts() == [Restart(ROOM, database.epoch)]


async def test_redis_keeps_only_presence(redis_server: RedisServer) -> None:
    """With a store, a room in Redis is its presence key; the room listing counts its members."""
    async with nodes(redis_server.url, Database()) as (a, _):
        await a.backend.join(ROOM, ANN)
        await a.backend.publish(ROOM, ANN, "hello")
        assert redis_server.command("KEYS", "*") == "chat:{lobby}:presence"
        assert await a.backend.rooms() == [RoomSummary(ROOM, 1)]
