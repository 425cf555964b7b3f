"""Against a real server: tokens, origins, per-address limits behind a proxy, abuse, slowloris, storms, logs."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.tokens import SECRET, token

from .clients import WAIT, Frame, expect, joined, messages, say, wait_closed, wait_health
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

AUTH_ENV = {"CHAT_JWT_SECRET": SECRET}


@asynccontextmanager
async def session(
    server: ServerProcess, room: str, headers: dict[str, str] | None = None, **query: str | int
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A connection with extra request headers, whose welcome was read."""
    with anyio.fail_after(WAIT):
        ws = await connect(server.url(room, **query), additional_headers=headers, open_timeout=WAIT, max_queue=None)
    async with ws:
        yield ws, await expect(ws, "welcome")


async def refused_status(server: ServerProcess, room: str, headers: dict[str, str] | None = None, **query: Any) -> int:
    """The HTTP status a handshake is refused with (the test fails if it is accepted)."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url(room, **query), additional_headers=headers, open_timeout=WAIT)
    status: int = refused.value.response.status_code
    return status


def forwarded(address: str) -> dict[str, str]:
    """Headers a reverse proxy on loopback (trusted by default) adds for a client at ``address``."""
    return {"X-Forwarded-For": address}


# --- tokens -------------------------------------------------------------------------------------------


async def test_a_token_in_the_header_joins_as_its_sub(start_server: StartServer) -> None:
    """CHAT_JWT_SECRET set: a valid bearer token joins under its sub and name."""
    server = start_server(env=AUTH_ENV)
    headers = {"Authorization": f"Bearer {token(sub='u-42', name='Ann')}"}
    async with session(server, "lobby", headers) as (_, welcome):
        assert welcome["you"] == {"id": "u-42", "name": "Ann"}


async def test_without_a_valid_token_the_handshake_gets_403(start_server: StartServer) -> None:
    """Missing or expired tokens are refused with HTTP 403."""
    server = start_server(env=AUTH_ENV)
    assert await refused_status(server, "lobby") == 403
    assert await refused_status(server, "lobby", token=token(ttl=-30)) == 403


async def test_tokens_never_reach_the_log(start_server: StartServer) -> None:
    """uvicorn prints request lines with their query: the token in ?token= is redacted, accepted or refused."""
    server = start_server(env=AUTH_ENV)
    good, expired = token(sub="u-log"), token(sub="u-old", ttl=-30)
    async with session(server, "lobby", token=good):
        pass
    assert await refused_status(server, "lobby", token=expired) == 403
    server.wait_log("event=disconnect")
    server.wait_log("event=refused")
    # The refused request line comes after event=refused; websockets logs "connection rejected" after it.
    server.wait_log("connection rejected")
    log = server.log
    assert "token=[redacted]" in log
    for secret in (good, expired, SECRET):
        assert secret not in log
    assert "eyJ" not in log


async def test_a_token_that_expires_closes_the_connection_with_1008(start_server: StartServer) -> None:
    """A live connection whose token expires is closed with 1008; the others see it leave."""
    server = start_server(env=AUTH_ENV)
    async with (
        session(server, "lobby", token=token(sub="stays", ttl=600)) as (stays, _),
        session(server, "lobby", token=token(sub="short", ttl=1.5)) as (short, _),
    ):
        await wait_closed(short, within=WAIT)
        assert (short.close_code, short.close_reason) == (1008, "token expired")
        assert (await expect(stays, "join"))["member"]["id"] == "short"
        assert (await expect(stays, "leave"))["member"]["id"] == "short"


# --- origins ------------------------------------------------------------------------------------------------


async def test_browser_origins_are_checked(start_server: StartServer) -> None:
    """Same origin and listed origins join, a foreign origin gets 403, no Origin joins."""
    server = start_server(allowed_origins="https://app.example")
    async with session(server, "lobby", {"Origin": f"http://{server.base}"}):
        pass
    async with session(server, "lobby", {"Origin": "https://app.example"}):
        pass
    async with session(server, "lobby"):
        pass
    assert await refused_status(server, "lobby", {"Origin": "https://evil.example"}) == 403


# --- per-address limits behind a proxy ---------------------------------------------------------------------------


async def test_connections_per_forwarded_address_are_capped(start_server: StartServer) -> None:
    """Behind a trusted proxy each client address has its own cap; one address at the cap leaves the others be."""
    server = start_server(max_connections_per_ip=2)
    heavy = forwarded("203.0.113.5")
    async with session(server, "lobby", heavy), session(server, "lobby", heavy):
        assert await refused_status(server, "lobby", heavy) == 429
        async with session(server, "lobby", forwarded("203.0.113.6")), session(server, "lobby"):
            pass
    await wait_health(server, connections=0, rooms=0)
    async with session(server, "lobby", heavy):
        pass


async def test_handshakes_per_forwarded_address_are_rate_limited(start_server: StartServer) -> None:
    """Past the handshake burst one address gets 429; another address still connects."""
    server = start_server(handshake_rate_per_ip=0.01, handshake_burst_per_ip=3)
    flooder = forwarded("198.51.100.7")
    for _ in range(3):
        async with session(server, "lobby", flooder):
            pass
    assert await refused_status(server, "lobby", flooder) == 429
    async with session(server, "lobby", forwarded("198.51.100.8")):
        pass


async def test_forwarding_headers_from_untrusted_peers_are_ignored(start_server: StartServer) -> None:
    """When the peer is not a trusted proxy, X-Forwarded-For cannot dodge the per-address cap."""
    server = start_server(max_connections_per_ip=1, forwarded_allow_ips="192.0.2.1")
    async with session(server, "lobby", forwarded("203.0.113.1")):
        assert await refused_status(server, "lobby", forwarded("203.0.113.2")) == 429


# --- abuse ----------------------------------------------------------------------------------------------------


async def test_a_flood_of_bad_frames_closes_that_connection_only(start_server: StartServer) -> None:
    """50 bad frames in a row close the sender with 1008; the room's other members keep talking."""
    server = start_server(rate_per_second=0)
    async with joined(server, "abuse", "peer") as (peer, _), joined(server, "abuse", "flooder") as (flooder, _):
        await expect(peer, "join")
        for index in range(60):
            await flooder.send(b"\x00" * index if index % 2 else "{" * (index + 1))
        await wait_closed(flooder)
        assert flooder.close_code == 1008
        assert "bad frames" in (flooder.close_reason or "")
        async with joined(server, "abuse", "other") as (other, _):
            assert await say(peer, "still here") == [1]
            assert (await messages(other, 1))[0]["text"] == "still here"


# --- half-open handshakes (slowloris) -------------------------------------------------------------------------


def half_open(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(head)
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def test_half_open_handshakes_are_cut_off_and_others_are_served(start_server: StartServer) -> None:
    """Sockets that never finish their request head get 408 after handshake_timeout; members chat meanwhile."""
    server = start_server(handshake_timeout=1)
    head = f"GET /ws/lobby HTTP/1.1\r\nHost: {server.base}\r\nUpgrade: websocket\r\n".encode()
    socks = [await anyio.to_thread.run_sync(half_open, server.port, head) for _ in range(100)]
    async with joined(server, "lobby", "ann") as (ann, _), joined(server, "lobby", "bob") as (bob, _):
        assert await say(ann, "not stalled") == [1]
        assert (await messages(bob, 1))[0]["text"] == "not stalled"
    answers = [await anyio.to_thread.run_sync(answer_of, sock) for sock in socks]
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]


async def test_an_endless_request_head_is_refused_with_431(server: ServerProcess) -> None:
    """A request head past 32 KiB is refused with 431 instead of being buffered without end."""
    head = b"GET /ws/lobby HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"f" * 40000 + b"\r\n"
    sock = await anyio.to_thread.run_sync(half_open, server.port, head)
    assert (await anyio.to_thread.run_sync(answer_of, sock)).startswith(b"HTTP/1.1 431")


# --- storms -------------------------------------------------------------------------------------------------------


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def storm(server: ServerProcess, rounds: int, parallel: int) -> None:
    """``rounds`` times, ``parallel`` clients from distinct addresses connect, join and vanish at once."""

    async def one(index: int) -> None:
        address = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        async with session(server, f"storm-{index % 7}", forwarded(address)):
            pass

    for round_ in range(rounds):
        async with anyio.create_task_group() as tg:
            for index in range(parallel):
                tg.start_soon(one, round_ * parallel + index)


async def test_a_connect_storm_leaves_delivery_intact_and_memory_bounded(start_server: StartServer) -> None:
    """Thousands of connects and disconnects: two members lose nothing, and the server's memory returns to bounds."""
    server = start_server(rate_per_second=0)
    async with joined(server, "steady", "ann") as (ann, _), joined(server, "steady", "bob") as (bob, _):
        await expect(ann, "join")
        await storm(server, 2, 50)  # warm up: allocator pools, imports, caches
        before = resident_kib(server.process.pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(storm, server, 20, 50)
            seqs = await say(ann, *(f"during the storm {index}" for index in range(100)), within=60)
        received = await messages(bob, 100, within=30)
        assert [frame["seq"] for frame in received] == seqs
        await wait_health(server, connections=2, rooms=1, within=10)
        growth = resident_kib(server.process.pid) - before
        assert growth < 16 * 1024, f"resident memory grew by {growth} KiB over 1000 connections"


async def test_the_refusal_log_is_throttled(start_server: StartServer) -> None:
    """A flood of refused handshakes does not become a flood of log lines."""
    server = start_server(handshake_rate_per_ip=0.01, handshake_burst_per_ip=1)
    async with session(server, "lobby"):
        pass
    for _ in range(60):
        assert await refused_status(server, "lobby") == 429
    # Each refusal's event=refused line (if any) precedes its "connection rejected": count once all 60 are in.
    server.wait_log("connection rejected", count=60)
    assert server.log_count("event=refused") <= 30
