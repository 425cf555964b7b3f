"""A cluster whose record is PostgreSQL: two server processes on one private Redis, every message committed
to a database of the test's own; Redis restarted empty loses nothing, and neither does PostgreSQL going away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from tests.postgres import PostgresServer, postgres_server
from tests.redis_server import RedisServer

from .clients import Frame, Participant, joined, messages, page_history, say, send_message, wait_for
from .server_process import ServerProcess, StartServer, servers_on
from .test_cluster import health_status

__all__ = ["postgres_server"]  # a fixture for this module

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOM = "forum"
FLAGS: dict[str, object] = {"rate_per_second": 0, "presence_ttl": 2}


@pytest.fixture
def start_node(redis_server: RedisServer, postgres_url: str) -> Iterator[StartServer]:
    """A factory of server processes on the test's Redis, recording in the test's PostgreSQL database."""
    yield from servers_on(redis_server.url, {**FLAGS, "store": postgres_url})


@asynccontextmanager
async def participants(*placed: tuple[ServerProcess, str]) -> AsyncIterator[list[Participant]]:
    """One member of ROOM per (node, name), each reading in the background."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        joined_members = []
        for node, name in placed:
            ws, welcome = await stack.enter_async_context(joined(node, ROOM, name))
            participant = Participant(ws, welcome)
            tg.start_soon(participant.read)
            joined_members.append(participant)
        yield joined_members
        tg.cancel_scope.cancel()


def acked_by(senders: list[Participant]) -> dict[int, str]:
    """seq -> text of every message the senders got an ack for (a seq given twice would be a bug)."""
    acked: dict[int, str] = {}
    for sender in senders:
        for seq, text in sender.acked_texts().items():
            assert seq not in acked, f"seq {seq} acked twice: {acked[seq]!r} and {text!r}"
            acked[seq] = text
    return acked


def delivered(member: Participant) -> list[tuple[int, str]]:
    """(seq, text) of every message the member received, in order."""
    return [(frame["seq"], frame["text"]) for frame in member.received if frame["type"] == "message"]


async def acked_more(sender: Participant, count: int, within: float) -> None:
    """Wait until ``sender`` got ``count`` more acks than it has now (or its connection ended)."""
    target = len(sender.acked) + count
    await sender.wait_until(lambda: sender.closed or len(sender.acked) >= target, within)


async def recorded(node: ServerProcess, epoch: str) -> list[Frame]:
    """The room's whole history as a newcomer on ``node`` pages it; the room must still be under ``epoch``."""
    async with joined(node, ROOM, "auditor") as (ws, welcome):
        assert welcome["epoch"] == epoch
        history = await page_history(ws)
        assert welcome["seq"] == len(history)
        return history


async def test_members_on_two_nodes_share_one_recorded_order(start_node: StartServer) -> None:
    """Two senders per node, 400 messages: every member sees seq 1..400 in one order, the one PostgreSQL records."""
    one, two = start_node(), start_node()
    placed = [(one, "one-a"), (one, "one-b"), (one, "one-watch"), (two, "two-a"), (two, "two-b"), (two, "two-watch")]
    async with participants(*placed) as everyone:
        senders = [member for member in everyone if not member.name.endswith("watch")]
        async with anyio.create_task_group() as tg:
            for sender in senders:
                tg.start_soon(sender.publish, 100)
        for sender in senders:
            await sender.wait_answered(within=20)
            assert not sender.refused, sender.refused
        for member in everyone:
            await member.wait_seqs(range(1, 401), within=20)
        reference = delivered(everyone[0])
        assert [seq for seq, _ in reference] == list(range(1, 401))
        for member in everyone[1:]:
            assert delivered(member) == reference, member.name
        assert dict(reference) == acked_by(senders)
        history = await recorded(two, everyone[0].welcome["epoch"])
        assert [(message["seq"], message["text"]) for message in history] == reference


async def test_redis_restarted_empty_while_members_publish_loses_nothing(
    start_node: StartServer, redis_server: RedisServer
) -> None:
    """Redis killed and restarted empty mid-stream: no 1012, every acked message delivered and recorded, same epoch."""
    one, two = start_node(), start_node()
    placed = [(one, "one-send"), (one, "one-watch"), (two, "two-send"), (two, "two-watch")]
    async with participants(*placed) as everyone, anyio.create_task_group() as tg:
        senders = [everyone[0], everyone[2]]
        epoch = everyone[0].welcome["epoch"]
        for sender in senders:
            tg.start_soon(sender.publish)
        await everyone[1].wait_until(lambda: len(everyone[1].seqs()) >= 20, within=20)
        await anyio.to_thread.run_sync(redis_server.restart)
        for sender in senders:
            await acked_more(sender, 20, within=30)
            sender.stop()
        for sender in senders:
            await sender.wait_answered(within=20)
            assert set(sender.refused.values()) <= {"unavailable"}, sender.refused
        acked = acked_by(senders)

        for member in everyone:
            if member.closed:
                assert member.close_code != 1012, f"{member.name} was closed with 1012"
                since = member.seqs()[-1] if member.seqs() else 0
                async with joined(one, ROOM, member.name, since=since, epoch=epoch) as (_, again):
                    assert again["recovered"] is True, member.name
                continue
            await member.wait_seqs(acked, within=20)
            seqs = member.seqs()
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{member.name}: a gap or a duplicate"
        tg.cancel_scope.cancel()

    history = await recorded(one, epoch)
    count = len(history)
    assert [message["seq"] for message in history] == list(range(1, count + 1))
    lost = {seq: text for seq, text in acked.items() if seq > count or history[seq - 1]["text"] != text}
    assert not lost, f"acked, then lost: {lost}"
    async with joined(two, ROOM, "later") as (ws, welcome):
        assert welcome["epoch"] == epoch
        assert await say(ws, "after the restart") == [count + 1]


async def wait_status(node: ServerProcess, status: int, within: float) -> None:
    """Poll ``/healthz`` until it answers ``status``."""
    with anyio.fail_after(within):
        while True:
            if await health_status(node) == status:
                return
            await anyio.sleep(0.1)


@pytest.fixture
def start_on_private_postgres(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[StartServer]:
    """A factory of server processes on the test's Redis, recording in the test's own PostgreSQL server."""
    yield from servers_on(redis_server.url, {**FLAGS, "store": postgres_server.url()})


async def test_postgresql_stopped_then_started_again(
    start_on_private_postgres: StartServer, postgres_server: PostgresServer
) -> None:
    """PostgreSQL down: publishes get unavailable and /healthz 503; back up: publishes go on at the next seq."""
    one, two = start_on_private_postgres(), start_on_private_postgres()
    async with joined(one, ROOM, "ann") as (ann, welcome), joined(two, ROOM, "bob") as (bob, _):
        assert await say(ann, "before") == [1]
        await anyio.to_thread.run_sync(postgres_server.stop)
        await send_message(ann, "during", "during")
        refusal, _ = await wait_for(ann, lambda frame: frame.get("ref") == "during", within=30)
        assert (refusal["type"], refusal["code"]) == ("error", "unavailable"), refusal
        await wait_status(one, 503, within=15)

        await anyio.to_thread.run_sync(postgres_server.start)
        await wait_status(one, 200, within=30)
        await wait_status(two, 200, within=30)
        assert await say(ann, "after", within=30) == [2]
        assert [(m["seq"], m["text"]) for m in await messages(bob, 2, within=30)] == [(1, "before"), (2, "after")]
    async with joined(two, ROOM, "carol") as (carol, again):
        assert again["epoch"] == welcome["epoch"]
        assert [m["text"] for m in await page_history(carol)] == ["before", "after"]
