"""Several real server processes on one private Redis: they serve the same rooms as if they were one."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.redis_server import RedisServer

from .clients import WAIT, Frame, expect, joined, messages, parse, wait_for, wait_leave
from .server_process import ServerProcess, StartServer, servers_on

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOM = "lobby"
FLAGS: dict[str, object] = {"rate_per_second": 0, "presence_ttl": 2}


@pytest.fixture
def start_node(redis_server: RedisServer) -> Iterator[StartServer]:
    """A factory of server processes on the test's Redis; each is stopped and its log checked afterwards."""
    yield from servers_on(redis_server.url, FLAGS)


class Member:
    """A client that reads every frame in the background, so it never holds the server back."""

    def __init__(self, ws: ClientConnection, welcome: Frame) -> None:
        self.ws = ws
        self.welcome = welcome
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self._changed = anyio.Event()

    async def read(self) -> None:
        try:
            async for data in self.ws:
                self.frames.append(parse(data))
                self._changed.set()
                self._changed = anyio.Event()
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self._changed.set()

    def seqs(self) -> list[int]:
        return [frame["seq"] for frame in self.frames if frame["type"] == "message"]

    async def wait_until(self, condition: Any, within: float = WAIT) -> None:
        with anyio.fail_after(within):
            while not condition():
                await self._changed.wait()


@asynccontextmanager
async def members(node: ServerProcess, count: int, prefix: str) -> AsyncIterator[list[Member]]:
    """``count`` members of ROOM on ``node``, each reading in the background."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        joined_members = []
        for index in range(count):
            ws, welcome = await stack.enter_async_context(joined(node, ROOM, f"{prefix}{index}"))
            member = Member(ws, welcome)
            tg.start_soon(member.read)
            joined_members.append(member)
        yield joined_members
        tg.cancel_scope.cancel()


async def publish_until(member: Member, stop: anyio.Event, acked: list[int], refused: list[str]) -> None:
    """Publish with refs until ``stop``; record acked seqs and the codes of refusals."""
    count = 0
    while not stop.is_set() and member.close_code is None:
        count += 1
        ref = f"{member.welcome['you']['id']}-{count}"
        await member.ws.send(json.dumps({"type": "message", "text": f"message {count}", "ref": ref}))

        def answered(ref: str = ref) -> bool:
            return any(f.get("ref") == ref and f["type"] in ("ack", "error") for f in member.frames)

        await member.wait_until(lambda: answered() or member.close_code is not None, within=15)
        for frame in member.frames:
            if frame.get("ref") == ref:
                if frame["type"] == "ack":
                    acked.append(frame["seq"])
                else:
                    refused.append(frame["code"])
        await anyio.sleep(0.01)  # pacing, not synchronisation


def assert_exactly_once_in_order(member: Member, acked: list[int]) -> None:
    seqs = member.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or duplicate"
    assert set(acked) <= set(seqs), f"acked but never delivered: {sorted(set(acked) - set(seqs))[:10]}"


async def test_members_on_two_nodes_talk(start_node: Any) -> None:
    """A member on node 1 and one on node 2 see each other join, type and talk."""
    one, two = start_node(), start_node()
    async with joined(one, ROOM, "ann") as (ann, _), joined(two, ROOM, "bob") as (bob, bob_welcome):
        assert {m["name"] for m in bob_welcome["members"]} == {"ann", "bob"}
        assert (await expect(ann, "join"))["member"]["name"] == "bob"
        await bob.send(json.dumps({"type": "typing"}))
        assert (await expect(ann, "typing"))["from"]["name"] == "bob"
        await ann.send("hello from node 1")
        message, _ = await wait_for(bob, lambda f: f["type"] == "message")
        assert (message["text"], message["from"]["name"], message["seq"]) == ("hello from node 1", "ann", 1)
        await bob.close()
        leave, _ = await wait_for(ann, lambda f: f["type"] == "leave")
        assert leave["member"]["name"] == "bob"


async def test_concurrent_senders_on_both_nodes_share_one_order(start_node: Any) -> None:
    """Two senders per node, 400 messages: every member on either node sees seq 1..400 in one order."""
    one, two = start_node(), start_node()
    async with members(one, 3, "one-") as on_one, members(two, 3, "two-") as on_two:
        everyone = on_one + on_two

        async def send(member: Member) -> None:
            for index in range(100):
                await member.ws.send(f"{member.welcome['you']['name']} {index}")

        async with anyio.create_task_group() as tg:
            for sender in (on_one[0], on_one[1], on_two[0], on_two[1]):
                tg.start_soon(send, sender)
        for member in everyone:
            await member.wait_until(lambda member=member: len(member.seqs()) == 400, within=20)
        reference = [(f["seq"], f["text"]) for f in everyone[0].frames if f["type"] == "message"]
        assert [seq for seq, _ in reference] == list(range(1, 401))
        for member in everyone[1:]:
            assert [(f["seq"], f["text"]) for f in member.frames if f["type"] == "message"] == reference


async def test_recovery_on_the_other_node(start_node: Any) -> None:
    """A member who left node 1 reconnects to node 2 and recovers exactly what it missed."""
    one, two = start_node(), start_node()
    async with joined(two, ROOM, "bob") as (bob, _):
        async with joined(one, ROOM, "ann") as (ann, welcome):
            await ann.send("seen")
            last = (await wait_for(ann, lambda f: f["type"] == "message"))[0]["seq"]
        for text in ("missed 1", "missed 2"):
            await bob.send(text)
        await wait_for(bob, lambda f: f.get("text") == "missed 2")
        async with joined(two, ROOM, "ann", since=last, epoch=welcome["epoch"]) as (_, again):
            assert again["recovered"] is True
            assert [m["text"] for m in again["history"]] == ["missed 1", "missed 2"]


async def test_epoch_survives_a_server_restart(start_node: Any) -> None:
    """The room's epoch lives in Redis: a member recovers across a restart of the only node."""
    first = start_node()
    async with joined(first, ROOM, "ann") as (ann, welcome):
        await ann.send("before the restart")
        seq = (await wait_for(ann, lambda f: f["type"] == "message"))[0]["seq"]
    assert first.stop() is None
    second = start_node()
    async with joined(second, ROOM, "ann", since=seq - 1, epoch=welcome["epoch"]) as (_, again):
        assert again["epoch"] == welcome["epoch"]
        assert again["recovered"] is True
        assert [m["text"] for m in again["history"]] == ["before the restart"]


async def test_members_of_a_killed_node_leave_presence(start_node: Any) -> None:
    """A node killed with SIGKILL: its members get a leave on the other node within the presence TTL."""
    one, two = start_node(), start_node()
    async with joined(one, ROOM, "ann") as (ann, _):
        ws = await connect(two.url(ROOM, name="bob"), open_timeout=WAIT)
        bob_id = (await expect(ws, "welcome"))["you"]["id"]
        assert (await expect(ann, "join"))["member"]["id"] == bob_id
        two.process.send_signal(signal.SIGKILL)
        await wait_leave(ann, {bob_id}, within=2 * 2 + 3)
        async with joined(one, ROOM, "cy") as (_, welcome):
            assert bob_id not in {m["id"] for m in welcome["members"]}


def worker_connections(parent: ServerProcess, port: int) -> dict[int, int]:
    """Established connections to ``port`` held by each worker process of ``parent``."""
    inodes: dict[str, None] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes[fields[9]] = None
    counts: dict[int, int] = {}
    children = Path(f"/proc/{parent.process.pid}/task/{parent.process.pid}/children").read_text().split()
    for pid in map(int, children):
        if "resource_tracker" in Path(f"/proc/{pid}/cmdline").read_text():
            continue
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


async def test_two_workers_share_rooms(start_node: Any) -> None:
    """``--workers 2``: members served by different worker processes talk to each other."""
    node = start_node(workers=2)
    node.wait_log("Application startup complete", count=2)  # the parent is ready before its workers
    async with AsyncExitStack() as stack:
        clients: list[ClientConnection] = []
        with anyio.fail_after(20):
            while True:
                ws, _ = await stack.enter_async_context(joined(node, ROOM, f"m{len(clients)}"))
                clients.append(ws)
                counts = worker_connections(node, node.port)
                if len(counts) == 2 and all(counts.values()):
                    break
        for ws in clients:
            await ws.send("from a worker")
        names = sorted(f"m{index}" for index in range(len(clients)))
        for ws in clients:
            got = await messages(ws, len(clients), within=10)
            assert sorted(frame["from"]["name"] for frame in got) == names, got


async def publish_through(start_node: Any, fault: Callable[[Member, list[int]], Awaitable[None]]) -> None:
    """Members on two nodes publish while ``fault`` runs; then every acked message reached everyone once, in order."""
    one, two = start_node(), start_node()
    async with members(one, 2, "one-") as on_one, members(two, 2, "two-") as on_two:
        stop, acked, refused = anyio.Event(), list[int](), list[str]()
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_until, on_one[0], stop, acked, refused)
            tg.start_soon(publish_until, on_two[0], stop, acked, refused)
            await on_one[1].wait_until(lambda: len(on_one[1].seqs()) >= 20)
            await fault(on_one[1], acked)
            stop.set()
        assert set(refused) <= {"unavailable"}, refused  # a fault may refuse a publish, and only as unavailable
        for member in on_one + on_two:
            await member.wait_until(lambda member=member: set(acked) <= set(member.seqs()), within=10)
            assert_exactly_once_in_order(member, acked)


async def test_pubsub_links_killed_while_members_publish(start_node: Any, redis_server: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub mid-stream: every acked message reaches every member once, in order."""

    async def kill_pubsub_links(watcher: Member, acked: list[int]) -> None:
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") == "2"
        await watcher.wait_until(lambda: len(watcher.seqs()) >= 80, within=10)

    await publish_through(start_node, kill_pubsub_links)


async def test_frozen_redis_while_members_publish(start_node: Any, redis_server: RedisServer) -> None:
    """Redis frozen for 3 s (SIGSTOP/SIGCONT): every acked message reaches every member once, in order."""

    async def freeze_redis(watcher: Member, acked: list[int]) -> None:
        redis_server.freeze()
        await anyio.sleep(3)  # the fault itself lasts 3 s
        redis_server.thaw()
        before = len(acked)
        await watcher.wait_until(lambda: len(acked) >= before + 20, within=15)

    await publish_through(start_node, freeze_redis)


async def health_status(node: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(f"http://{node.base}/healthz")).status_code


async def test_redis_restarted_empty(start_node: Any, redis_server: RedisServer) -> None:
    """Redis killed and restarted empty: unavailable meanwhile, 503 then 200, members closed with 1012
    and told recovered false when they come back, service resumed within 5 s."""
    one, two = start_node(), start_node()
    async with members(one, 1, "one-") as (ann,), members(two, 1, "two-") as (bob,):
        await ann.ws.send(json.dumps({"type": "message", "text": "before", "ref": "b"}))
        await bob.wait_until(lambda: bob.seqs() == [1])
        epoch = ann.welcome["epoch"]
        redis_server.kill()
        await ann.ws.send(json.dumps({"type": "message", "text": "during", "ref": "d"}))
        await ann.wait_until(lambda: any(f.get("ref") == "d" for f in ann.frames), within=10)
        assert [f["code"] for f in ann.frames if f.get("ref") == "d"] == ["unavailable"]
        assert await health_status(one) == 503
        redis_server.start()
        for member in (ann, bob):
            await member.wait_until(lambda member=member: member.close_code is not None, within=5)
            assert member.close_code == 1012
        assert await health_status(one) == 200
        assert await health_status(two) == 200
    async with joined(two, ROOM, "ann", since=1, epoch=epoch) as (ws, welcome):
        assert welcome["recovered"] is False
        assert welcome["epoch"] != epoch
        await ws.send(json.dumps({"type": "message", "text": "after", "ref": "a"}))
        ack = (await wait_for(ws, lambda f: f["type"] == "ack"))[0]
        assert ack["seq"] == 1
