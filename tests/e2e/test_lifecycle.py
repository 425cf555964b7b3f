"""Connections come and go: clean and abrupt disconnects leave nothing behind; SIGTERM closes everyone."""

from __future__ import annotations

import signal
import time
from contextlib import AsyncExitStack

import anyio
import pytest

from .clients import (
    TCP_CLOSE,
    expect,
    joined,
    kernel_send_buffer_max,
    raw_join,
    say,
    wait_closed,
    wait_health,
    wait_join,
    wait_leave,
    wait_tcp_state,
)
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

EXIT_DEADLINE = 10.0
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
"""uvicorn shuts down gracefully, then re-raises the signal it caught, so the status says SIGTERM."""


async def test_closed_connections_leave_no_connections_or_rooms(server: ServerProcess) -> None:
    """Once every client closed, /healthz counts 0 connections in 0 rooms again."""
    assert (await server.healthz())["connections"] == 0
    async with joined(server, "first", "alice") as (alice, _):
        async with joined(server, "first", "bob") as (_, bob), joined(server, "second", "carol") as (_, carol):
            body = await server.healthz()
            assert (body["status"], body["connections"], body["rooms"]) == ("ok", 3, 2)
            assert carol["members"] == [carol["you"]]
            await wait_join(alice, {bob["you"]["id"]})
        await wait_leave(alice, {bob["you"]["id"]})
        await wait_health(server, connections=1, rooms=1)
    await wait_health(server, connections=0, rooms=0)


async def test_clients_that_vanish_without_a_close_frame_leave_no_ghost(server: ServerProcess) -> None:
    """Sockets closed (FIN), reset (RST) or aborted without a close frame are removed: leave, healthz, members."""
    async with AsyncExitStack() as stack:
        watcher, watching = await stack.enter_async_context(joined(server, "ghosts", "watcher"))
        fin, fin_welcome = await raw_join(server, "ghosts", "fin")
        stack.callback(fin.close)
        rst, rst_welcome = await raw_join(server, "ghosts", "rst")
        stack.callback(rst.close)
        aborted, aborted_welcome = await stack.enter_async_context(joined(server, "ghosts", "aborted"))
        ghosts = {welcome["you"]["id"] for welcome in (fin_welcome, rst_welcome, aborted_welcome)}
        assert len(aborted_welcome["members"]) == 4
        await wait_health(server, connections=4, rooms=1)
        await wait_join(watcher, ghosts)  # told once per presence window: a join and leave within one cancel

        fin.close()
        rst.reset()
        aborted.transport.abort()
        await wait_leave(watcher, ghosts)
        await wait_health(server, connections=1, rooms=1)

        async with joined(server, "ghosts", "newcomer") as (_, welcome):
            assert {member["id"] for member in welcome["members"]} == {watching["you"]["id"], welcome["you"]["id"]}


async def test_a_client_that_stops_answering_pings_is_removed(start_server: StartServer) -> None:
    """A peer that goes silent without closing (no FIN, no RST, no pong) is dropped after the ping timeout."""
    server = start_server(ws_ping_interval=1, ws_ping_timeout=1)
    async with joined(server, "silence", "watcher") as (watcher, _):
        silent, welcome = await raw_join(server, "silence", "silent")
        try:
            await expect(watcher, "join")
            await wait_leave(watcher, {welcome["you"]["id"]}, within=8)
            await wait_health(server, connections=1, rooms=1)
        finally:
            silent.close()


async def test_sigterm_closes_every_client_with_1012_or_1001_and_exits(server: ServerProcess) -> None:
    """On SIGTERM every client gets a close frame with 1012 or 1001, and the process exits within 10 s."""
    async with AsyncExitStack() as stack:
        clients = [
            (await stack.enter_async_context(joined(server, room, f"member{index}")))[0]
            for index, room in enumerate(["north", "north", "south", "east"])
        ]
        assert await say(clients[0], "before the shutdown") == [1]
        started = time.monotonic()
        server.terminate()
        with anyio.fail_after(EXIT_DEADLINE):
            for ws in clients:
                await wait_closed(ws, within=EXIT_DEADLINE)
                assert ws.close_code in (1012, 1001), (ws.close_code, ws.close_reason)
            status = await anyio.to_thread.run_sync(server.wait_exit, EXIT_DEADLINE)
        assert status in STOPPED_BY_SIGTERM, server.log
        assert time.monotonic() - started < EXIT_DEADLINE


async def test_sigterm_with_a_client_that_stopped_reading_still_exits(start_server: StartServer) -> None:
    """A client whose socket is full cannot take the close frame; the server resets it and exits within 10 s."""
    server = start_server(rate_per_second=0, queue_bytes=256 * 1024 * 1024)
    async with joined(server, "stuck", "publisher") as (publisher, _):
        stuck, _ = await raw_join(server, "stuck", "stuck", rcvbuf=4096)
        try:
            await expect(publisher, "join")
            # More than the kernel can buffer for the stuck socket, all of it within its (huge) queue.
            text = "x" * 3000
            for batch in range(2 * kernel_send_buffer_max() // (100 * len(text)) + 1):
                # The publisher is the only sender: every message is acked, with the room's next seqs.
                assert await say(publisher, *[text] * 100, within=30) == list(range(100 * batch + 1, 100 * batch + 101))
            body = await server.healthz()
            assert body["connections"] == 2, "the stuck client was dropped before the shutdown"
            started = time.monotonic()
            server.terminate()
            await wait_closed(publisher, within=EXIT_DEADLINE)
            assert publisher.close_code in (1012, 1001)
            status = await anyio.to_thread.run_sync(server.wait_exit, EXIT_DEADLINE)
            assert status in STOPPED_BY_SIGTERM, server.log
            assert time.monotonic() - started < EXIT_DEADLINE
            await wait_tcp_state(stuck, TCP_CLOSE, within=EXIT_DEADLINE)
            assert isinstance(stuck.drain(), ConnectionResetError), "the stuck socket was closed, not reset"
        finally:
            stuck.close()
