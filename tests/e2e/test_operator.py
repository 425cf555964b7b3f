"""The operator's view of real servers: /metrics as traffic flows, summed over workers, and the API across nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.redis_server import RedisServer
from tests.standins import Samples, samples_of

from .clients import WAIT, expect, joined, kernel_send_buffer_max, raw_join, say, wait_closed, wait_leave
from .server_process import ServerProcess, StartServer, servers_on
from .test_cluster import worker_connections

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

KEY = "e2e-operator-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def scrape(server: ServerProcess) -> Samples:
    """``/metrics`` as ``name`` or ``name{label="value"}`` -> value."""
    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.get(f"http://{server.base}/metrics")
    assert response.status_code == 200, response.text
    return samples_of(response.text)


async def scrape_until(server: ServerProcess, done: Callable[[Samples], bool], within: float = WAIT) -> Samples:
    """Scrape until the figures satisfy ``done`` (they follow traffic asynchronously)."""
    samples: Samples = {}
    try:
        with anyio.fail_after(within):
            while True:
                samples = await scrape(server)
                if done(samples):
                    return samples
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"metrics never got there: {samples}") from None


async def test_metrics_follow_live_traffic(start_server: StartServer) -> None:
    """Connections, messages received and delivered, errors and publish timings move on a real server."""
    server = start_server()
    async with joined(server, "m", "ann") as (ann, _), joined(server, "m", "bob") as (bob, _):
        await expect(ann, "join")
        await say(ann, "one", "two")
        await ann.send("{broken")
        await expect(ann, "error")
        samples = await scrape_until(server, lambda s: s["chat_messages_delivered_total"] >= 4)
        assert samples["chat_connections"] == 2
        assert samples["chat_rooms"] == 1
        assert samples['chat_messages_received_total{source="member"}'] == 2
        assert samples['chat_errors_total{code="bad_request"}'] == 1
        assert samples["chat_publish_seconds_count"] == 2
        assert samples["chat_backend_up"] == 1
        del bob
    await scrape_until(server, lambda s: s["chat_connections"] == 0)


BIG = "x" * 50000


def floods() -> int:
    """How many BIG messages surely fill a non-reading socket's kernel buffers on both ends."""
    return 2 * kernel_send_buffer_max() // len(BIG) + 10


@asynccontextmanager
async def beside_a_stuck_member(server: ServerProcess, room: str) -> AsyncIterator[ClientConnection]:
    """A publisher in ``room`` with a member that read its welcome and never reads again (4 KiB receive buffer)."""
    async with joined(server, room, "publisher") as (publisher, _):
        stuck, _ = await raw_join(server, room, "stuck", rcvbuf=4096)
        try:
            await expect(publisher, "join")
            yield publisher
        finally:
            stuck.close()


async def test_a_slow_consumer_close_is_counted(start_server: StartServer) -> None:
    """A member that stops reading and is closed with 1013 shows in chat_slow_consumer_closes_total."""
    server = start_server(rate_per_second=0, queue_bytes=65536, max_text=len(BIG))
    async with beside_a_stuck_member(server, "slow") as publisher:
        with anyio.fail_after(60):
            for index in range(floods()):
                await say(publisher, BIG)  # waits for its own echo: the publisher keeps up
                if index % 8 == 7 and (await scrape(server))["chat_slow_consumer_closes_total"] >= 1:
                    break
        assert (await scrape(server))["chat_slow_consumer_closes_total"] == 1


async def test_a_stalled_socket_close_is_counted_as_a_slow_consumer(start_server: StartServer) -> None:
    """A member whose socket takes nothing for send_timeout (its queue far from full): closed with 1013, counted."""
    server = start_server(rate_per_second=0, queue_bytes=64 * 1024 * 1024, send_timeout=1, max_text=len(BIG))
    async with beside_a_stuck_member(server, "stall") as publisher:
        with anyio.fail_after(60):
            for _ in range(floods()):
                await say(publisher, BIG)  # fills the stuck socket's kernel buffers, never its queue
        await scrape_until(server, lambda s: s["chat_slow_consumer_closes_total"] == 1)


async def test_removing_a_member_is_counted_and_logged(start_server: StartServer) -> None:
    """DELETE via the API: the member is closed with 1008 "removed", counted, and logged with its code."""
    server = start_server(env={"CHAT_API_KEY": KEY})
    async with joined(server, "ops", "ann") as (ann, welcome):
        async with httpx.AsyncClient(timeout=WAIT, headers=AUTH) as client:
            response = await client.delete(f"http://{server.base}/api/rooms/ops/members/{welcome['you']['id']}")
        assert response.status_code == 200, response.text
        await wait_closed(ann)
        assert (ann.close_code, ann.close_reason) == (1008, "removed")
    await scrape_until(server, lambda s: s['chat_policy_closes_total{reason="removed"}'] == 1)
    server.wait_log("code=1008")


# --- several processes on one Redis ---------------------------------------------------------------


@pytest.fixture
def start_node(redis_server: RedisServer) -> Iterator[StartServer]:
    """Server processes on the test's own Redis, with the API on; stopped and checked afterwards."""
    yield from servers_on(redis_server.url, {"rate_per_second": 0}, {"CHAT_API_KEY": KEY})


async def api(node: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=WAIT, headers=AUTH) as client:
        return await client.request(method, f"http://{node.base}{path}", **kwargs)


async def test_the_api_reaches_members_on_another_node(start_node: Callable[..., ServerProcess]) -> None:
    """Through node one: list node two's members, post to them, remove one of them with 1008."""
    one, two = start_node(), start_node()
    async with joined(two, "hall", "ann") as (ann, _), joined(two, "hall", "bob") as (bob, bob_welcome):
        await expect(ann, "join")
        rooms = (await api(one, "GET", "/api/rooms")).json()["rooms"]
        assert {"room": "hall", "members": 2} in rooms
        members = (await api(one, "GET", "/api/rooms/hall")).json()["members"]
        assert {member["name"] for member in members} == {"ann", "bob"}

        posted = await api(one, "POST", "/api/rooms/hall/messages", json={"text": "from the operator"})
        assert posted.json() == {"seq": 1}
        message = await expect(ann, "message")
        assert (message["seq"], message["from"]["id"], message["text"]) == (1, "system", "from the operator")

        bob_id = bob_welcome["you"]["id"]
        assert (await api(one, "DELETE", f"/api/rooms/hall/members/{bob_id}")).status_code == 200
        await wait_closed(bob)
        assert (bob.close_code, bob.close_reason) == (1008, "removed")
        await wait_leave(ann, {bob_id})
        history = (await api(one, "GET", "/api/rooms/hall/history")).json()["messages"]
        assert [item["text"] for item in history] == ["from the operator"]


async def test_metrics_add_up_every_worker(start_node: Callable[..., ServerProcess]) -> None:
    """``--workers 2``: whichever worker answers /metrics, it counts the connections of both."""
    node = start_node(workers=2)
    node.wait_log("Application startup complete", count=2)
    async with AsyncExitStack() as stack:
        clients: list[ClientConnection] = []
        with anyio.fail_after(20):
            while True:
                ws, _ = await stack.enter_async_context(joined(node, "hall", f"m{len(clients)}"))
                clients.append(ws)
                counts = worker_connections(node, node.port)
                if len(counts) == 2 and all(counts.values()):
                    break
        expected = len(clients)
        for _ in range(6):  # several scrapes: each may be answered by either worker
            samples = await scrape_until(node, lambda s: s["chat_connections"] == expected)
            assert samples["chat_backend_up"] == 1
        for ws in clients:
            await ws.send("hello")
        total = len(clients) * len(clients)
        await scrape_until(node, lambda s: s["chat_messages_delivered_total"] == total, within=10)
