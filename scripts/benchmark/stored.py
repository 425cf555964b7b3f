"""The scenarios of durable stores: ``restart`` (serving again over a full store) and ``history`` (deep pages).

Neither needs the client processes: one member in the harness (``probe.py``) times a join or a
history request at a time. A server with a durable store gets its store filled through the store
class while its process is stopped (``fill.py``), then starts again on it. A server that keeps a
bounded history (``memory://``, ``redis://``) gets as many messages as it keeps, published by that
member, so that its pages can be compared where they exist.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.sync.client import ClientConnection

from benchmark import fill, latency, probe, procfs
from benchmark.scenarios import ScenarioFailed
from benchmark.servers import Server

Row = dict[str, Any]
HISTORY_SIZE = 1000
"""What ``memory://`` and ``redis://`` keep of a room unless ``--history-size`` says otherwise (chat's default)."""
PUBLISH_WINDOW = 100
FILL_METHOD = "chat.stores store class, appends awaited in batches"


@dataclass(frozen=True)
class RestartParams:
    messages: int = 1_000_000
    rooms: int = 1000
    batch: int = fill.BATCH
    timeout: float = 60.0
    """The most a start may take up to its first welcome."""


@dataclass(frozen=True)
class HistoryParams:
    messages: int = 1_000_000
    pages: int = 2000
    limit: int = 50
    warmup: int = 20
    """Pages requested first and not counted (connection and caches warm up)."""
    batch: int = fill.BATCH
    seed: int = 1
    timeout: float = 10.0
    """The most one request (a join, a page, an ack) may take."""


percentile = latency.nearest_rank


def history_size(argv: Sequence[str]) -> int:
    """How many messages of a room a server started with ``argv`` keeps without a durable store."""
    size = HISTORY_SIZE
    for index, argument in enumerate(argv):
        if argument == "--history-size" and index + 1 < len(argv):
            size = int(argv[index + 1])
        elif argument.startswith("--history-size="):
            size = int(argument.split("=", 1)[1])
    return size


def serving(server: Server, room: str, seq: int, timeout: float) -> Row:
    """Join ``room`` as soon as the server answers; from its process's start to a welcome at ``seq``, and RSS then."""
    connection, welcome, at = probe.join_when_serving(server.port, room, time.monotonic() + timeout)
    try:
        if welcome.get("seq") != seq:
            raise ScenarioFailed(f"welcome in {room!r} at seq {welcome.get('seq')}, expected {seq}")
        memory = server.memory()
    finally:
        connection.close()
    return {"ready_s": at - server.process.started_at, "rss_mb": memory.get("VmRSS", 0) / 2**20}


def fill_stopped(server: Server, messages: int, rooms: int, batch: int) -> fill.Filled:
    """Stop the server's process, fill its store, start it again (not waiting for the first welcome)."""
    if server.store is None:
        raise ScenarioFailed(f"{server.kind.name} has no durable store to fill")
    server.stop_process()
    filled = fill.fill(server.store.url, messages, rooms, batch)
    server.start_process()
    return filled


# --- restart -------------------------------------------------------------------------------------


def run_restart(server: Server, params: RestartParams) -> Row:
    """Starts on an empty store (the first, then a restart), then a restart over ``messages`` in ``rooms``."""
    if server.store is None:
        raise ScenarioFailed(f"{server.kind.name} has no durable store")
    room = fill.room_name(0)
    fresh = serving(server, room, 0, params.timeout)
    server.stop_process()
    server.start_process()
    empty = serving(server, room, 0, params.timeout)
    filled = fill_stopped(server, params.messages, params.rooms, params.batch)
    full = serving(server, room, filled.counts[0], params.timeout)
    last = serving(server, filled.rooms[-1], filled.counts[-1], params.timeout)
    size = server.store.size_bytes()
    return {
        "messages": filled.messages,
        "rooms": params.rooms,
        "fill_seconds": round(filled.seconds, 2),
        "fill_per_s": filled.per_second,
        "fill_method": FILL_METHOD,
        "store_mb": size / 2**20 if size else None,
        "fresh_ready_s": fresh["ready_s"],
        "empty_ready_s": empty["ready_s"],
        "full_ready_s": full["ready_s"],
        "empty_rss_mb": empty["rss_mb"],
        "full_rss_mb": full["rss_mb"],
        "rss_growth_mb": full["rss_mb"] - empty["rss_mb"],
        "last_room_rss_mb": last["rss_mb"],
    }


# --- history -------------------------------------------------------------------------------------


def run_history(server: Server, params: HistoryParams) -> Row:
    """One room of ``messages`` (or as many as the server keeps); ``pages`` history requests at random depths."""
    room = fill.room_name(0)
    started = time.monotonic()
    if server.store is not None:
        stored = kept = fill_stopped(server, params.messages, 1, params.batch).messages
        method = FILL_METHOD
    else:
        kept = min(params.messages, history_size(server.argv_for(server.port)))
        stored = publish(server, room, kept, params.timeout)
        method = "published by one member"
    fill_seconds = time.monotonic() - started
    if kept < params.limit:
        raise ScenarioFailed(f"{kept} messages kept: fewer than a page of {params.limit}")
    connection, welcome, _ = probe.join_when_serving(server.port, room, time.monotonic() + params.timeout)
    try:
        top = int(welcome["seq"])
        if top != stored:
            raise ScenarioFailed(f"welcome at seq {top}, expected {stored}")
        lowest = top - kept + 1
        times, window = pages(server, connection, lowest, top, params)
    finally:
        connection.close()
    return {
        "messages": stored,
        "kept": kept,
        "fill_seconds": round(fill_seconds, 2),
        "fill_method": method,
        "limit": params.limit,
        "pages": len(times),
        "depth_max": top + 1 - (lowest + params.limit),
        "p50_ms": percentile(times, 0.50),
        "p99_ms": percentile(times, 0.99),
        "max_ms": max(times),
        "cpu_ms_per_page": 1000 * window.server / len(times),
        "server_cpu_pct": 100 * window.server / window.seconds,
        "other_cpu_pct": 100 * window.other / window.seconds,
    }


def publish(server: Server, room: str, count: int, timeout: float) -> int:
    """Publish ``count`` messages into ``room`` as one member; the room's last seq."""
    connection, _ = probe.join(server.port, room, timeout)
    try:
        return probe.publish(connection, count, fill.TEXT_SIZE, PUBLISH_WINDOW, timeout)
    finally:
        connection.close()


@dataclass
class Window:
    """CPU seconds while the pages were requested: the server's (its helpers included), everyone else's."""

    seconds: float = 0.0
    server: float = 0.0
    other: float = 0.0

    @classmethod
    def now(cls, server: Server) -> Window:
        """Counters now (to be subtracted: ``since``)."""
        ours = sum(server.cpu_seconds())
        everyone = procfs.system_cpu_seconds()[0] - procfs.cpu_seconds(os.getpid())
        return cls(time.monotonic(), ours, everyone - ours)

    def since(self, start: Window) -> Window:
        return Window(self.seconds - start.seconds, self.server - start.server, self.other - start.other)


def pages(
    server: Server, connection: ClientConnection, lowest: int, top: int, params: HistoryParams
) -> tuple[list[float], Window]:
    """Request pages ending at random seqs in [lowest + limit - 1, top]: round trips (ms), and CPU meanwhile."""
    chooser = random.Random(params.seed)
    times: list[float] = []
    start = Window()
    for number in range(params.warmup + params.pages):
        if number == params.warmup:
            start = Window.now(server)
        before = chooser.randint(lowest + params.limit, top + 1)
        seconds, answer = probe.page(connection, before, params.limit, number + 1, params.timeout)
        messages = answer.get("messages", [])
        if len(messages) != params.limit or messages[-1].get("seq") != before - 1:
            seqs = [message.get("seq") for message in messages[:1] + messages[-1:]]
            raise ScenarioFailed(f"history before {before}: {len(messages)} messages, first and last seq {seqs}")
        if number >= params.warmup:
            times.append(1000 * seconds)
    return times, Window.now(server).since(start)
