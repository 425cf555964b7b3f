"""Presence under a reconnect storm, against a real server: every member ends with the server's member list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.standins import Changes
from tests.tokens import SECRET, token

from .clients import joined, parse, wait_health, wait_join
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

KEY = "e2e-presence-key"
ROOMS = ("east", "west")
CLIENTS = 300
SETTLE = 30.0
"""The most a whole storm may take to settle on this shared machine (it takes about a second)."""


class Member:
    """One client: its room, and the member list it holds (its welcome's, then each join and leave applied)."""

    def __init__(self, server: ServerProcess, sub: str, room: str, changes: Changes) -> None:
        self.server = server
        self.sub = sub
        self.room = room
        self.members: dict[str, str] = {}
        self.seq = 0
        self.epoch = ""
        self.ws: ClientConnection | None = None
        self._changes = changes

    async def connect(self) -> None:
        """Connect (with ``since``/``epoch`` once it had a welcome) and apply the welcome."""
        query = {"token": token(sub=self.sub, name=self.sub)}
        if self.epoch:
            query.update(since=str(self.seq), epoch=self.epoch)
        ws = self.ws = await connect(self.server.url(self.room, **query), open_timeout=SETTLE, max_queue=None)
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        self.members = {member["id"]: member["name"] for member in welcome["members"]}
        self.seq, self.epoch = welcome["seq"], welcome["epoch"]
        self._changes.changed()

    async def read(self) -> None:
        """Apply every join and leave until the connection is gone."""
        assert self.ws is not None
        try:
            async for data in self.ws:
                frame = json.loads(data)
                if frame["type"] == "join":
                    member = frame["member"]
                    assert self.members.get(member["id"]) != member["name"], f"{self.sub} was told again: {frame}"
                    self.members[member["id"]] = member["name"]
                elif frame["type"] == "leave":
                    assert self.members.pop(frame["member"]["id"], None) is not None, frame
                self._changes.changed()
        except ConnectionClosed:
            pass

    def cut(self) -> None:
        """Drop the connection without a close handshake, as a network cut would."""
        assert self.ws is not None
        self.ws.transport.abort()


async def api_members(server: ServerProcess, room: str) -> set[str]:
    async with httpx.AsyncClient(timeout=SETTLE, headers={"Authorization": f"Bearer {KEY}"}) as client:
        response = await client.get(f"http://{server.base}/api/rooms/{room}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {member["id"] for member in body["members"]}


@asynccontextmanager
async def storm_server(start_server: StartServer) -> AsyncIterator[ServerProcess]:
    yield start_server(
        env={"CHAT_JWT_SECRET": SECRET, "CHAT_API_KEY": KEY},
        max_connections_per_ip=0,
        handshake_rate_per_ip=0,
        rate_per_second=0,
    )


async def test_clients_reconnecting_at_once_all_end_with_the_servers_member_list(start_server: StartServer) -> None:
    """300 members of two rooms drop at once and reconnect at once: each ends with its room's member list as
    the server has it, and a member joining afterwards is told to every one of them."""
    changes = Changes()
    async with storm_server(start_server) as server, anyio.create_task_group() as readers:
        clients = [Member(server, f"m{index}", ROOMS[index % 2], changes) for index in range(CLIENTS)]
        expected = {room: {client.sub for client in clients if client.room == room} for room in ROOMS}

        def settled() -> bool:
            return all(set(client.members) == expected[client.room] for client in clients)

        async def connect_all() -> None:
            with anyio.fail_after(SETTLE):
                async with anyio.create_task_group() as connecting:
                    for client in clients:
                        connecting.start_soon(client.connect)
            for client in clients:
                readers.start_soon(client.read)

        await connect_all()
        await changes.wait_until(settled, SETTLE)

        for client in clients:
            client.cut()
        await connect_all()
        await wait_health(server, connections=CLIENTS, rooms=len(ROOMS), within=SETTLE)  # the cut ones are gone
        await changes.wait_until(settled, SETTLE)
        for room in ROOMS:
            assert await api_members(server, room) == expected[room]

        # Anything still to be announced from the storm would come before the newcomers' joins.
        for room in ROOMS:
            expected[room].add(f"late-{room}")
        late = [Member(server, f"late-{room}", room, changes) for room in ROOMS]
        async with anyio.create_task_group() as joining:
            for member in late:
                joining.start_soon(member.connect)
        await changes.wait_until(settled, SETTLE)
        for room in ROOMS:
            assert await api_members(server, room) == expected[room]
        for client in clients + late:
            client.cut()
        readers.cancel_scope.cancel()


@pytest.mark.parametrize("deflate", [False, True])
async def test_a_windows_joins_reach_each_member_as_messages_of_their_own_or_one_batch(
    start_server: StartServer, deflate: bool
) -> None:
    """Three joins within one window: a plain member gets three ``join`` messages, a ``batch=1`` member one
    message holding the three; with per-message deflate too."""
    server = start_server(ws_per_message_deflate=deflate, presence_window=1.0)
    async with (
        joined(server, "window", "plain") as (plain, _),
        joined(server, "window", "batched", batch=1) as (batched, batched_welcome),
    ):
        await wait_join(plain, {batched_welcome["you"]["id"]})
        async with (
            joined(server, "window", "a") as (_, a),
            joined(server, "window", "b") as (_, b),
            joined(server, "window", "c") as (_, c),
        ):
            newcomers = [welcome["you"] for welcome in (a, b, c)]
            told = [parse(await plain.recv()) for _ in range(3)]
            assert told == [{"type": "join", "room": "window", "member": member} for member in newcomers]
            message = await batched.recv()
            assert isinstance(message, str)
            assert [json.loads(line) for line in message.split("\n")] == told
