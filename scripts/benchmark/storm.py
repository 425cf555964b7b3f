"""The ``storm`` scenario: every member drops at once and comes back as the web client does.

``members`` connect on v1 (``/ws/{room}``, with presence, as the web client joins) in rooms of
``room_size`` (``round(members / room_size)`` rooms; member i is in room ``i mod rooms``) and sit
idle for ``settle`` s. One member of each room is its publisher: it sends a message every
``interval`` s (each room at its own phase) from ``warmup`` s before the drop until ``tail`` s after
the last member's welcome. Then all of them drop at once:

- ``restart``: the server process is stopped (SIGTERM: chat closes every member with 1012, then
  exits) and started again on the same port (``Server.restart_in_place``); with several worker
  processes, all of them restart;
- ``cut``: every client resets its connections without a close handshake (a network cut on the
  clients' side); the server stays up and sees them go.

Every member reconnects by itself with ``since``/``epoch`` (``storm_client.py``: the web client's
spread and backoff). The figures: the time from the drop until every member has its welcome
again (and when half of them had it), the server's CPU over that time (its redis-server's
included), the latency of every message stamped after the drop to each member (live, or in the
welcome after its reconnect), every frame and byte the server sent from the drop to the end of the
run (per member, by type), reconnect attempts and why they failed, and whether each member got
every message the server accepted in its room's final epoch, exactly once and in order.

What "accepted" means: chat acknowledged it (``ack``); a reference server echoed it to its
publisher. Which messages every member must get: chat's acknowledged messages whose epoch is the
room's last (a restart on ``memory://`` starts new epochs, by design: the check then covers the
messages acknowledged after the restart; a cut, or Redis, keeps the epoch: every message
acknowledged in the run, before the drop too); the references' messages echoed since the server
last started (after a restart: those published after the drop).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from benchmark import latency, procfs
from benchmark.pool import Reply, WorkerPool
from benchmark.scenarios import CALL_TIMEOUT, Common, Row, ScenarioFailed, check_alive, source_address, spread
from benchmark.servers import Restarted, Server
from benchmark.storm_client import KINDS

RESTART = "restart"
CUT = "cut"
DROPS = (RESTART, CUT)
QUIET = 1.0
"""Seconds without a new acceptance or receipt after which the members are checked as they are."""
SETTLE_POLL = 0.25
WELCOME_BIN = 0.5
"""Seconds per bin of the welcomes' timeline (``welcomes_per_bin`` in the JSON)."""
CHECK_TIMEOUT = 60.0
"""The most checking every member of a client process may take."""


@dataclass(frozen=True)
class StormParams:
    members: int = 10_000
    room_sizes: list[int] = field(default_factory=lambda: [150])
    drops: list[str] = field(default_factory=lambda: list(DROPS))
    interval: float = 0.2
    """Seconds between two messages of a room's publisher."""
    size: int = 100
    """Characters of each message's text (its 20-digit stamp included)."""
    settle: float = 1.0
    """Seconds idle after every member connected, before publishing starts."""
    warmup: float = 1.0
    """Seconds of publishing before the drop."""
    tail: float = 1.0
    """Seconds of publishing after the last member's welcome."""
    limit: float = 20.0
    """The most the members may take to be welcomed again after the drop."""
    drain: float = 10.0
    """The most the last messages may take to be acknowledged and delivered after publishing stops."""
    poll: float = 0.05


def binned(times: list[float], width: float) -> list[int]:
    """How many of ``times`` (seconds, ascending) fall in each ``width``-second bin from 0 to the last one."""
    counts = [0] * (int(times[-1] // width) + 1 if times else 0)
    for value in times:
        counts[max(0, int(value // width))] += 1
    return counts


def storm_rooms(members: int, room_size: int) -> int:
    return max(1, round(members / room_size))


def storm_members(members: int, room_size: int) -> list[tuple[str, str, bool]]:
    """``(room, name, publisher)`` of every member: member i in room ``i mod rooms``, the first of each publishes."""
    rooms = storm_rooms(members, room_size)
    return [(f"storm{index % rooms}", f"s{index}", index < rooms) for index in range(members)]


@dataclass
class Reading:
    """CPU seconds of everyone at one moment."""

    at: float
    server: float
    redis: float
    store: float
    clients: float
    system: float
    interrupts: float
    harness: float


def read(pool: WorkerPool, server: Server) -> Reading:
    system, interrupts = procfs.system_cpu_seconds()
    tree, redis, store = server.cpu_seconds()
    return Reading(
        time.monotonic(), tree, redis, store, pool.cpu_seconds(), system, interrupts, procfs.cpu_seconds(os.getpid())
    )


def totals(replies: list[Reply], key: str) -> int:
    return sum(int(reply[key]) for reply in replies)


def wait_welcomed(pool: WorkerPool, server: Server, members: int, deadline: float, poll: float) -> tuple[int, int]:
    """Poll until every member was welcomed since the drop, the deadline, or the server's exit.

    How many were, and the longest accept queue seen on the server's port meanwhile.
    """
    queue = 0
    while True:
        welcomed = totals(pool.call("storm_stats", CALL_TIMEOUT), "welcomed")
        queue = max(queue, procfs.accept_queue(server.port) or 0)
        if welcomed >= members or time.monotonic() >= deadline or not server.alive:
            return welcomed, queue
        time.sleep(poll)


def settle(
    pool: WorkerPool, acks: bool, drop: str, since_ns: int, limit: float, poll: float
) -> tuple[list[Reply], list[Reply], bool]:
    """After publishing stopped: check every member until none that is back misses anything, or nothing changed
    for ``QUIET`` s, or ``limit`` s: the last reports and checks, and whether it ended before the limit."""
    deadline = time.monotonic() + limit
    last: tuple[int, int, int] | None = None
    quiet_since = time.monotonic()
    while True:
        reports = pool.call("storm_report", CALL_TIMEOUT)
        accepted = accepted_window(reports, acks, drop, since_ns)
        checks = pool.call("storm_check", CHECK_TIMEOUT, accepted=accepted)
        state = (sum(len(stamps) for stamps in accepted.values()), totals(checks, "received"), totals(checks, "lost"))
        now = time.monotonic()
        if state == last and (state[2] == 0 or now - quiet_since >= QUIET):
            return reports, checks, True
        if state != last:
            last, quiet_since = state, now
        if now >= deadline:
            return reports, checks, False
        time.sleep(max(poll, SETTLE_POLL))


def accepted_window(reports: list[Reply], acks: bool, drop: str, since_ns: int) -> dict[str, list[int]]:
    """Each room's messages that every member must have got (stamps, in the order the server accepted them)."""
    rooms: dict[str, list[int]] = {}
    for report in reports:
        for publisher in report["publishers"]:
            accepted: list[tuple[str | None, int]] = publisher["accepted"]
            if acks:
                stamps = [stamp for epoch, stamp in accepted if epoch == publisher["epoch"]]
            elif drop == RESTART:
                stamps = [stamp for _, stamp in accepted if stamp >= since_ns]
            else:
                stamps = [stamp for _, stamp in accepted]
            rooms[publisher["room"]] = stamps
    return rooms


def run_storm(pool: WorkerPool, server: Server, common: Common, params: StormParams, room_size: int, drop: str) -> Row:
    """``params.members`` in rooms of ``room_size`` connect, idle, drop (``restart`` or ``cut``) and come back."""
    if drop not in DROPS:
        raise ValueError(f"unknown drop {drop!r}: {', '.join(DROPS)}")
    everyone = storm_members(params.members, room_size)
    rooms = storm_rooms(params.members, room_size)
    addressed: list[list[tuple[str, str, bool, str]]] = []
    for share in spread(everyone, pool.count):
        addressed.append(
            [
                (room, name, publisher, source_address(server.opened + index))
                for index, (room, name, publisher) in enumerate(share)
            ]
        )
        server.opened += len(share)
    per_process = max(len(share) for share in addressed)
    budget = common.connect_timeout * math.ceil(per_process / max(common.concurrency, 1)) + 10
    arguments = [
        {
            "port": server.port,
            "members": share,
            "query": common.query,
            "deflate": common.deflate,
            "concurrency": common.concurrency,
            "wait": common.connect_timeout,
            "acks": server.kind.acks,
        }
        for share in addressed
    ]
    replies = pool.call_each("storm_connect", arguments, budget)
    failed = totals(replies, "failed")
    if failed:
        samples = sorted({sample for reply in replies for sample in reply["failures"]})
        alive = "" if server.alive else " (the server exited)"
        raise ScenarioFailed(f"{failed} of {params.members} members did not connect{alive}: {'; '.join(samples)[:300]}")
    connect_seconds = max(reply["finished"] for reply in replies) - min(reply["started"] for reply in replies)
    time.sleep(params.settle)
    check_alive(server)
    pool.call("storm_publish", CALL_TIMEOUT, interval=params.interval, size=params.size)
    time.sleep(params.warmup)
    check_alive(server)

    start = read(pool, server)
    at, since_ns = time.monotonic(), time.monotonic_ns()
    restarted: Restarted | None = None
    pool.call("storm_arm", CALL_TIMEOUT, at=at, since_ns=since_ns, cut=drop == CUT)
    if drop == RESTART:
        restarted = server.restart_in_place()
    welcomed, queue = wait_welcomed(pool, server, params.members, at + params.limit, params.poll)
    end = read(pool, server)
    check_alive(server)
    if welcomed >= params.members:
        time.sleep(params.tail)
    pool.call("storm_stop_publishing", CALL_TIMEOUT)
    reports, checks, drained = settle(pool, server.kind.acks, drop, since_ns, params.drain, params.poll)
    check_alive(server)
    row = storm_row(params, room_size, rooms, drop, reports, checks, start, end, restarted, since_ns)
    row.update(
        connect_retries=totals(replies, "retries"),
        accept_queue_peak=queue,
        connect_seconds=round(connect_seconds, 3),
        handshakes_per_s=params.members / max(connect_seconds, 1e-9),
    )
    notes = []
    if welcomed < params.members:
        notes.append(
            f"{params.members - welcomed} of {params.members} members not welcomed again within {params.limit:g} s"
        )
    if not drained:
        notes.append(f"messages still arriving {params.drain:g} s after publishing stopped")
    if row["absent"]:
        notes.append(
            f"{row['absent']} members not back at the end (their {row['absent_pairs']} messages to come "
            "are not counted as lost)"
        )
    if restarted is not None and restarted.complaint:
        notes.append(restarted.complaint)
    if restarted is not None and restarted.refused_starts:
        notes.append(
            f"the new process found the port taken {len(restarted.refused_starts)} times before it listened "
            f"({restarted.refused_starts[0][:120]})"
        )
    if notes:
        row["note"] = "; ".join(notes)
    return row


def storm_row(
    params: StormParams,
    room_size: int,
    rooms: int,
    drop: str,
    reports: list[Reply],
    checks: list[Reply],
    start: Reading,
    end: Reading,
    restarted: Restarted | None,
    since_ns: int,
) -> Row:
    """The figures of one storm from the client processes' reports and checks and the CPU readings."""
    members = params.members
    times = sorted(value for report in reports for value in report["welcome_times"])
    drops = sorted(value for report in reports for value in report["drop_times"])
    hist = latency.merge(report["hist"] for report in reports)
    elapsed = max(end.at - start.at, 1e-9)
    server_cpu = end.server - start.server
    if restarted is not None:
        # The old process's tree from the drop to its exit, then the new one's from its start.
        server_cpu = (restarted.old_cpu - start.server) + end.server
    redis_cpu = end.redis - start.redis
    store_cpu = end.store - start.store
    client_cpu = end.clients - start.clients
    ours = server_cpu + redis_cpu + store_cpu + client_cpu + (end.harness - start.harness)
    other = (end.system - start.system) - ours
    kinds: dict[str, int] = {}
    kind_bytes: dict[str, int] = {}
    for report in reports:
        for kind, count in report["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
        for kind, count in report["kind_bytes"].items():
            kind_bytes[kind] = kind_bytes.get(kind, 0) + count
    publishers = [publisher for report in reports for publisher in report["publishers"]]
    storm_accepted = sum(1 for p in publishers for _, stamp in p["accepted"] if stamp >= since_ns)

    def merged(key: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for report in reports:
            for name, count in report[key].items():
                total[str(name)] = total.get(str(name), 0) + int(count)
        return dict(sorted(total.items()))

    row: Row = {
        "members": members,
        "room_size": room_size,
        "rooms": rooms,
        "drop": drop,
        "publish_interval_s": params.interval,
        "limit_s": params.limit,
        "welcomed": len(times),
        "all_welcomed": len(times) >= members,
        "welcomed_s": times[-1] if times and len(times) >= members else None,
        "welcome_p50_s": latency.nearest_rank(times, 0.5),
        "welcome_p90_s": latency.nearest_rank(times, 0.9),
        "welcomes_per_bin": binned(times, WELCOME_BIN),
        "last_welcome_s": times[-1] if times else None,
        "dropped_p50_s": latency.nearest_rank(drops, 0.5),
        "dropped_last_s": drops[-1] if drops else None,
        "server_exited_s": restarted.exited_s if restarted else None,
        "server_listening_s": restarted.listening_s if restarted else None,
        "refused_starts": len(restarted.refused_starts) if restarted else None,
        "storm_seconds": round(elapsed, 3),
        "server_cpu_s": server_cpu + redis_cpu + store_cpu,
        "redis_cpu_s": redis_cpu,
        "store_cpu_s": store_cpu,
        "server_cpu_pct": 100 * (server_cpu + redis_cpu + store_cpu) / elapsed,
        "redis_cpu_pct": 100 * redis_cpu / elapsed,
        "store_cpu_pct": 100 * store_cpu / elapsed,
        "client_cpu_pct": 100 * client_cpu / elapsed,
        "other_cpu_pct": max(0.0, 100 * other / elapsed) if elapsed >= 0.5 else None,
        "softirq_cpu_pct": 100 * (end.interrupts - start.interrupts) / elapsed,
        "p50_ms": latency.percentile(hist, 0.50),
        "p99_ms": latency.percentile(hist, 0.99),
        "max_ms": latency.percentile(hist, 1.0),
        "latency_samples": latency.count(hist),
        "published": sum(int(p["sent"]) for p in publishers),
        "storm_messages": storm_accepted,
        "publish_skipped": sum(int(p["skipped"]) for p in publishers),
        "unacknowledged": sum(int(p["unacknowledged"]) for p in publishers),
        "expected": totals(checks, "expected"),
        "received": totals(checks, "received"),
        "lost": totals(checks, "lost"),
        "members_lost": totals(checks, "members_lost"),
        "lost_recovered": totals(checks, "lost_recovered"),
        "absent": totals(checks, "absent"),
        "absent_pairs": totals(checks, "absent_pairs"),
        "duplicates": totals(checks, "duplicates"),
        "out_of_order": totals(checks, "out_of_order"),
        "loss_samples": [sample for check in checks for sample in check["samples"]][:5],
        "frames_per_member": totals(reports, "frames") / members,
        "bytes_per_member": totals(reports, "wire_bytes") / members,
        "per_member": {kind: kinds.get(kind, 0) / members for kind in KINDS},
        "bytes_per_member_by_type": {kind: kind_bytes.get(kind, 0) / members for kind in KINDS},
        "reconnect_attempts": totals(reports, "reconnect_attempts"),
        "attempts_per_member": totals(reports, "reconnect_attempts") / members,
        "failed_attempts": merged("failures"),
        "close_codes": merged("closes"),
        "recovered": merged("recovered"),
        "errors": totals(reports, "errors"),
        "error_samples": [sample for report in reports for sample in report["error_samples"]][:3],
        "foreign_messages": totals(reports, "foreign"),
    }
    return row
