"""The scenarios with client processes: what each one connects, how it loads the server, what it measures.

``fanout``, ``idle`` and ``join`` run their members on either endpoint: v1 (``/ws/{room}``, one
connection per room) or ``/ws`` (protocol v1.1, one connection, a ``join`` frame per room).

Each ``run_*`` function gets a started server and the client pool, and returns one result row (a
dict of plain values). It raises ``ScenarioFailed`` (or lets a ``WorkerError`` through) when it
cannot measure; the harness turns that into a failed row. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from benchmark import latency, procfs
from benchmark.client import V1, WS
from benchmark.pool import Reply, WorkerPool
from benchmark.servers import Server

Row = dict[str, Any]
Member = tuple[str, str, str]
"""``(rooms, name, role)``: on v1 the room of the connection; on ``/ws`` the rooms it joins, comma-separated."""
CALL_TIMEOUT = 15.0
"""The most a quick command (stats, rate, publish) may take a client process to answer."""
DISCONNECT_TIMEOUT = 15.0
PER_ADDRESS = 50
"""Connections from each loopback source address (see ``source_address``)."""
T = TypeVar("T")
SHORTEST_WINDOW = 0.5
"""Seconds below which CPU shares read from /proc are too coarse to judge the machine's calm."""


class ScenarioFailed(RuntimeError):
    """The scenario could not measure (connections refused, server died, ...)."""


@dataclass(frozen=True)
class Common:
    """What every scenario of one run shares."""

    deflate: bool = False
    query: str = ""
    """Extra query parameters for every connection, e.g. ``&batch=1``."""
    connect_timeout: float = 10.0
    concurrency: int = 100
    """Handshakes in flight per client process."""
    rcvbuf: int = 4096


@dataclass(frozen=True)
class FanoutParams:
    members: list[int] = field(default_factory=lambda: [200, 1000])
    duration: float = 10.0
    warmup: float = 1.5
    window: int = 10
    size: int = 100
    stall: float = 5.0
    drain: float = 10.0


@dataclass(frozen=True)
class RoomsParams:
    connections: int = 2000
    room_size: int = 10
    rates: list[float] = field(default_factory=lambda: [round(0.5 * 1.5**power, 2) for power in range(12)])
    """0.5, 0.75, 1.12, 1.69, 2.53, 3.8, 5.7, 8.54, 12.81, 19.22, 28.83, 43.25 messages/s per client."""
    refine: int = 2
    step: float = 3.0
    settle: float = 1.0
    size: int = 100
    p99_limit_ms: float = 100.0
    min_delivered: float = 0.95


@dataclass(frozen=True)
class SlowParams:
    members: int = 50
    messages: int = 5000
    size: int = 2048
    window: int = 10
    stall: float = 5.0
    limit: float = 45.0
    """The most the publisher may take for all its messages."""
    drain: float = 5.0


@dataclass(frozen=True)
class IdleParams:
    connections: list[int] = field(default_factory=lambda: [5000, 15000])
    rooms: int = 100
    settle: float = 2.0
    members: list[int] = field(default_factory=lambda: [1000])
    """Members in ``rooms_each`` rooms each: v1 opens ``rooms_each`` connections per member, ``/ws`` one."""
    rooms_each: int = 10


@dataclass(frozen=True)
class JoinParams:
    members: list[int] = field(default_factory=lambda: [500])
    rooms_each: int = 10
    room_size: int = 10
    """Members (in blocks) that share the same rooms: each room ends with this many."""
    warmup: int = 20
    """Members who join first, not counted."""


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters of every client process and CPU of everyone, at one moment."""

    at: float
    replies: list[Reply]
    server_cpu: float
    redis_cpu: float
    store_cpu: float
    client_cpu: float
    system_cpu: float
    interrupt_cpu: float
    harness_cpu: float

    def total(self, key: str) -> int:
        return sum(int(reply[key]) for reply in self.replies)

    def hist(self) -> dict[int, int]:
        return latency.merge(reply["hist"] for reply in self.replies)

    def seconds_since(self, start: Snapshot) -> float:
        return max(self.at - start.at, 1e-9)

    def server_cpu_since(self, start: Snapshot) -> float:
        """CPU seconds of the server, its redis-server and its PostgreSQL backends since ``start``."""
        helpers = (self.redis_cpu - start.redis_cpu) + (self.store_cpu - start.store_cpu)
        return (self.server_cpu - start.server_cpu) + helpers


def snapshot(pool: WorkerPool, server: Server, reset: bool = False) -> Snapshot:
    """Read everything at once; ``reset`` starts a new latency window in every client process."""
    system_cpu, interrupt_cpu = procfs.system_cpu_seconds()
    server_cpu, redis_cpu, store_cpu = server.cpu_seconds()
    client_cpu = pool.cpu_seconds()
    harness_cpu = procfs.cpu_seconds(os.getpid())
    replies = pool.call("stats", CALL_TIMEOUT, reset=reset)
    return Snapshot(
        time.monotonic(), replies, server_cpu, redis_cpu, store_cpu, client_cpu, system_cpu, interrupt_cpu, harness_cpu
    )


def window_figures(start: Snapshot, end: Snapshot) -> Row:
    """Deliveries, latency and CPU between two snapshots (the end one's histogram covers the window)."""
    elapsed = end.seconds_since(start)
    deliveries = end.total("received") - start.total("received")
    server_cpu = end.server_cpu_since(start)
    hist = end.hist()
    ours = server_cpu + (end.client_cpu - start.client_cpu) + (end.harness_cpu - start.harness_cpu)
    other = (end.system_cpu - start.system_cpu) - ours
    return {
        "seconds": round(elapsed, 3),
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / elapsed,
        "p50_ms": latency.percentile(hist, 0.50),
        "p99_ms": latency.percentile(hist, 0.99),
        "max_ms": latency.percentile(hist, 1.0),
        "latency_samples": latency.count(hist),
        "cpu_ms_per_1k": server_cpu * 1e6 / deliveries if deliveries else None,
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "redis_cpu_pct": 100 * (end.redis_cpu - start.redis_cpu) / elapsed,
        "store_cpu_pct": 100 * (end.store_cpu - start.store_cpu) / elapsed,
        "client_cpu_pct": 100 * (end.client_cpu - start.client_cpu) / elapsed,
        # Over a short window, clock-tick granularity (10 ms per process read) makes this meaningless.
        "other_cpu_pct": max(0.0, 100 * other / elapsed) if elapsed >= SHORTEST_WINDOW else None,
        "softirq_cpu_pct": 100 * (end.interrupt_cpu - start.interrupt_cpu) / elapsed,
    }


def spread(members: list[T], workers: int, first: int = 0) -> list[list[T]]:
    """Deal members to client processes in turn, starting with process ``first``."""
    shares: list[list[T]] = [[] for _ in range(workers)]
    for index, member in enumerate(members):
        shares[(first + index) % workers].append(member)
    return shares


def source_address(number: int) -> str:
    """The loopback address the ``number``-th connection to a server comes from (PER_ADDRESS to each).

    Real servers see many client addresses, and one source address has only the kernel's ephemeral
    port range (about 28000 ports) towards a server port (chat's per-address limits are off in the
    benchmark all the same). All of 127.0.0.0/8 reaches the loopback interface without configuration.
    """
    block = number // PER_ADDRESS
    return f"127.{1 + block // 62500}.{block // 250 % 250}.{1 + block % 250}"


def connect(
    pool: WorkerPool, server: Server, common: Common, shares: list[list[Member]], endpoint: str = V1
) -> list[Reply]:
    """Open the members of ``shares[i]`` from process i; fails unless every one got its welcome(s)."""
    total = sum(len(share) for share in shares)
    addressed: list[list[tuple[str, str, str, str]]] = []
    for share in shares:
        addressed.append([(*member, source_address(server.opened + index)) for index, member in enumerate(share)])
        server.opened += len(share)
    per_process = max(len(share) for share in shares)
    # Each handshake may take connect_timeout; a process runs `concurrency` of them at a time.
    budget = common.connect_timeout * math.ceil(per_process / max(common.concurrency, 1))
    arguments = [
        {
            "port": server.port,
            "members": share,
            "query": common.query,
            "deflate": common.deflate,
            "concurrency": common.concurrency,
            "wait": common.connect_timeout,
            "rcvbuf": common.rcvbuf,
            "endpoint": endpoint,
        }
        for share in addressed
    ]
    replies = pool.call_each("connect", arguments, budget + 10)
    failed = sum(reply["failed"] for reply in replies)
    if failed:
        samples = sorted({sample for reply in replies for sample in reply["failures"]})
        alive = "" if server.alive else " (the server exited)"
        raise ScenarioFailed(f"{failed} of {total} connections failed{alive}: {'; '.join(samples)[:300]}")
    return replies


def connect_publisher(pool: WorkerPool, server: Server, common: Common, room: str, endpoint: str = V1) -> None:
    """Open the publisher of ``room`` in client process 0 (members then go from process 1 on: ``first=1``)."""
    connect(pool, server, common, spread([(room, "publisher", "publisher")], pool.count), endpoint)


def start_publisher(pool: WorkerPool, server: Server, count: int, window: int, size: int, stall: float) -> None:
    """Start the closed-loop publisher; it counts acks where the server sends them, its own echoes elsewhere."""
    arguments = {"count": count, "window": window, "size": size, "ack": server.kind.acks, "stall": stall}
    pool.call_one(0, "publish", arguments, CALL_TIMEOUT)


def publisher_state(pool: WorkerPool) -> dict[str, Any]:
    """The publisher's progress (it lives in client process 0)."""
    state: dict[str, Any] = pool.call_one(0, "stats", {}, CALL_TIMEOUT)["publish"]
    return state


def wait_publisher(
    pool: WorkerPool, server: Server, deadline: float, poll: float, sample: Callable[[], None] | None = None
) -> bool:
    """Until ``deadline``, every ``poll`` s (after ``sample()``): whether the publisher finished; False on a timeout.

    Also stops waiting when the server exited (its members are gone; ``check_alive`` reports it).
    """
    while time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        if sample is not None:
            sample()
        if publisher_state(pool).get("finished"):
            return True
        if not server.alive:
            break
    return False


def stop_and_drain(pool: WorkerPool, server: Server, receivers: int, limit: float) -> tuple[dict[str, Any], Snapshot]:
    """Stop the publisher; let its messages reach the ``receivers`` (bounded by ``limit`` s): (its state, the end)."""
    state: dict[str, Any] = pool.call_one(0, "stop_publishing", {}, CALL_TIMEOUT)["publish"]
    final = drain(pool, server, int(state.get("sent", 0)) * receivers, limit)
    check_alive(server)
    return state, final


def drain(pool: WorkerPool, server: Server, expected: int, limit: float, quiet: float = 2.0) -> Snapshot:
    """Wait until the members received ``expected`` messages, or nothing arrived for ``quiet`` s, or ``limit`` s."""
    deadline = time.monotonic() + limit
    last = snapshot(pool, server)
    progress_at = time.monotonic()
    while last.total("received") < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        current = snapshot(pool, server)
        if current.total("received") != last.total("received"):
            progress_at = time.monotonic()
        elif time.monotonic() - progress_at > quiet:
            return current
        last = current
    return last


def check_alive(server: Server) -> None:
    if not server.alive:
        raise ScenarioFailed(f"the server exited:\n{server.log()}")


def issues(end: Snapshot) -> Row:
    """Errors and closes the clients saw."""
    codes: dict[str, int] = {}
    for reply in end.replies:
        for code, number in reply["close_codes"].items():
            codes[str(code)] = codes.get(str(code), 0) + number
    samples = [sample for reply in end.replies for sample in reply["error_samples"]][:3]
    return {
        "errors": end.total("errors"),
        "error_samples": samples,
        "disconnected": end.total("disconnected"),
        "close_codes": codes,
    }


# --- fanout --------------------------------------------------------------------------------------


def run_fanout(
    pool: WorkerPool, server: Server, common: Common, params: FanoutParams, members: int, endpoint: str = V1
) -> Row:
    """One room of ``members`` (the publisher is one of them); closed-loop publisher with ``window`` in flight.

    On ``/ws`` every member (the publisher too) joins the room with a ``join`` frame once connected,
    and the publisher's messages name the room.
    """
    room = "fanout"
    connect_publisher(pool, server, common, room, endpoint)
    others = [(room, f"m{index}", "member") for index in range(1, members)]
    connect(pool, server, common, spread(others, pool.count, first=1), endpoint)
    start_publisher(pool, server, 10**12, params.window, params.size, params.stall)
    time.sleep(params.warmup)
    start = snapshot(pool, server, reset=True)
    wait_publisher(pool, server, start.at + params.duration, poll=0.5)
    end = snapshot(pool, server)
    state, final = stop_and_drain(pool, server, members, params.drain)
    sent = int(state.get("sent", 0))
    row = window_figures(start, end)
    received = final.total("received")
    row.update(
        members=members,
        endpoint=endpoint,
        published=sent,
        publish_per_s=(end.total("sent") - start.total("sent")) / end.seconds_since(start),
        stalled=bool(state.get("stalled")),
        expected=sent * members,
        received=received,
        lost=max(0, sent * members - received),
        **issues(final),
    )
    if state.get("stalled") or not row["deliveries"]:
        row["note"] = "publisher stalled" if state.get("stalled") else "nothing delivered"
    return row


# --- rooms ---------------------------------------------------------------------------------------


def run_rooms(pool: WorkerPool, server: Server, common: Common, params: RoomsParams) -> Row:
    """``connections`` in rooms of ``room_size``, every one publishing open loop; ramp until p99 passes the limit.

    The rates are tried in order until one fails; then ``refine`` more steps bisect (geometrically)
    between the last rate held and the first that failed, each after the backlog drained.
    """
    rooms = max(1, params.connections // params.room_size)
    members = [(f"r{index % rooms}", f"c{index}", "member") for index in range(rooms * params.room_size)]
    connect(pool, server, common, spread(members, pool.count))
    steps: list[Row] = []
    held: Row | None = None
    failed: Row | None = None
    try:
        for rate in params.rates:
            step = rooms_step(pool, server, params, rate, len(members))
            steps.append(step)
            if not step["held"]:
                failed = step
                break
            held = step
        refine = params.refine
        while refine > 0 and failed is not None and held is not None:
            refine -= 1
            if failed["disconnected"] or held["rate_per_client"] * 1.05 >= failed["rate_per_client"]:
                break  # members were closed: later steps would not compare; or close enough already
            pool.call("rate", CALL_TIMEOUT, per_client=0, size=params.size)
            backlog = snapshot(pool, server)
            drain(pool, server, backlog.total("open_sent") * params.room_size, limit=10.0, quiet=1.0)
            rate = round((held["rate_per_client"] * failed["rate_per_client"]) ** 0.5, 2)
            step = rooms_step(pool, server, params, rate, len(members))
            step["refine"] = True
            steps.append(step)
            if step["held"]:
                held = step
            else:
                failed = step
    finally:
        pool.call("rate", CALL_TIMEOUT, per_client=0, size=params.size)
    row: Row = {"connections": len(members), "rooms": rooms, "steps": steps}
    for key in (
        "rate_per_client",
        "offered_per_s",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "cpu_ms_per_1k",
        "server_cpu_pct",
        "client_cpu_pct",
        "other_cpu_pct",
    ):
        row[f"held_{key}"] = held[key] if held else None
    row["held_publish_per_s"] = row.pop("held_offered_per_s")
    row["failed_rate_per_client"] = failed["rate_per_client"] if failed else None
    row["failed_p99_ms"] = failed["p99_ms"] if failed else None
    row["failed_delivered_ratio"] = failed["delivered_ratio"] if failed else None
    if failed is None:
        row["note"] = "held every rate tried: raise --rates"
    elif failed["client_skipped"]:
        row["note"] = "the clients could not send at the failing rate"
    return row


def rooms_step(pool: WorkerPool, server: Server, params: RoomsParams, rate: float, members: int) -> Row:
    """Every client publishes ``rate`` messages a second; after ``settle`` s, measure ``step`` s."""
    pool.call("rate", CALL_TIMEOUT, per_client=rate, size=params.size)
    time.sleep(params.settle)
    start = snapshot(pool, server, reset=True)
    time.sleep(params.step)
    end = snapshot(pool, server)
    check_alive(server)
    step = window_figures(start, end)
    sent = end.total("open_sent") - start.total("open_sent")
    skipped = end.total("open_skipped") - start.total("open_skipped")
    expected = sent * params.room_size
    step.update(
        rate_per_client=rate,
        offered_per_s=sent / end.seconds_since(start),
        target_per_s=rate * members,
        delivered_ratio=step["deliveries"] / expected if expected else 0.0,
        client_skipped=skipped,
        disconnected=end.total("disconnected"),
    )
    step["held"] = (
        step["p99_ms"] is not None
        and step["p99_ms"] < params.p99_limit_ms
        and step["delivered_ratio"] >= params.min_delivered
        and skipped == 0
        and step["disconnected"] == 0
    )
    return step


# --- slow consumer -------------------------------------------------------------------------------


def run_slow_consumer(pool: WorkerPool, server: Server, common: Common, params: SlowParams) -> Row:
    """``members`` in one room, one of them never reads; the publisher sends ``messages`` of ``size`` bytes."""
    room = "slow"
    normal = params.members - 2
    connect_publisher(pool, server, common, room)
    before = [(room, f"m{index}", "member") for index in range(1, 1 + normal // 2)]
    after = [(room, f"m{index}", "member") for index in range(1 + normal // 2, 1 + normal)]
    connect(pool, server, common, spread(before, pool.count, first=1))
    slow_process = 1 % pool.count
    slow_share = [[(room, "slow", "slow")] if index == slow_process else [] for index in range(pool.count)]
    connect(pool, server, common, slow_share)
    connect(pool, server, common, spread(after, pool.count, first=1))
    baseline = server.memory()
    start = snapshot(pool, server, reset=True)
    start_publisher(pool, server, params.messages, params.window, params.size, params.stall)
    peak_rss = baseline.get("VmRSS", 0)

    def sample_rss() -> None:
        nonlocal peak_rss
        peak_rss = max(peak_rss, server.memory().get("VmRSS", 0))

    finished = wait_publisher(pool, server, time.monotonic() + params.limit, poll=0.25, sample=sample_rss)
    others = params.members - 1
    state, final = stop_and_drain(pool, server, others, params.drain)
    sent = int(state.get("sent", 0))
    memory = server.memory()
    started = float(state.get("started", start.at))
    ended = float(state.get("ended", final.at))
    slow_closed = next((at for reply in final.replies for at in reply["slow_closed_at"]), None)
    leave_times = [reply["leave_at"] for reply in final.replies if reply["leave_at"] is not None]
    received = final.total("received")
    per_member = [count for reply in final.replies for count in reply["received_each"]]
    hist = final.hist()
    row: Row = {
        "members": params.members,
        "messages": params.messages,
        "size": params.size,
        "published": sent,
        "publish_seconds": round(ended - started, 3),
        "stalled": bool(state.get("stalled")) or not finished,
        "expected": params.messages * others,
        "delivered": received,
        "delivered_pct": 100 * received / (params.messages * others) if params.messages else 0.0,
        "lost_of_published": max(0, sent * others - received),
        "members_complete": sum(1 for count in per_member if count >= params.messages),
        "p50_ms": latency.percentile(hist, 0.50),
        "p99_ms": latency.percentile(hist, 0.99),
        "peak_rss_mb": max(peak_rss, memory.get("VmHWM", 0)) / 2**20,
        "baseline_rss_mb": baseline.get("VmRSS", 0) / 2**20,
        "end_rss_mb": memory.get("VmRSS", 0) / 2**20,
        "slow_leave_s": min(leave_times) - started if leave_times else None,
        "slow_tcp_closed_s": slow_closed - started if slow_closed is not None else None,
        "server_cpu_s": final.server_cpu_since(start),
        **issues(final),
    }
    closed = [value for value in (row["slow_leave_s"], row["slow_tcp_closed_s"]) if value is not None]
    row["slow_closed_s"] = min(closed) if closed else None
    if row["stalled"]:
        row["note"] = f"delivery stalled after {sent} messages"
    return row


# --- idle ----------------------------------------------------------------------------------------


def idle_members(params: IdleParams, members: int, rooms_each: int, endpoint: str) -> list[Member]:
    """Who connects in ``idle``: ``members`` in ``rooms_each`` of the ``params.rooms`` rooms each.

    Member i is in rooms ``idle{(i * rooms_each + k) % rooms}`` for k below ``rooms_each`` (rooms
    at least ``rooms_each``, so that they differ): on v1 one connection per room (of the same
    name), on ``/ws`` one connection joining them all.
    """
    count = max(params.rooms, rooms_each)
    rooms = [[f"idle{(index * rooms_each + k) % count}" for k in range(rooms_each)] for index in range(members)]
    if endpoint == WS:
        return [(",".join(mine), f"i{index}", "member") for index, mine in enumerate(rooms)]
    return [(room, f"i{index}", "member") for index, mine in enumerate(rooms) for room in mine]


def run_idle(
    pool: WorkerPool,
    server: Server,
    common: Common,
    params: IdleParams,
    members: int,
    rooms_each: int = 1,
    endpoint: str = V1,
) -> Row:
    """``members`` over ``rooms`` rooms, ``rooms_each`` rooms each, that only connect and join.

    Memory per connection and per member-room (a member in one room), handshakes and joins per second.
    """
    time.sleep(0.5)
    baseline = server.memory()
    before = snapshot(pool, server)
    chosen = idle_members(params, members, rooms_each, endpoint)
    replies = connect(pool, server, common, spread(chosen, pool.count), endpoint)
    connected = snapshot(pool, server)
    elapsed = max(reply["finished"] for reply in replies) - min(reply["started"] for reply in replies)
    window = window_figures(before, connected)
    server_cpu = connected.server_cpu_since(before)
    time.sleep(params.settle)
    check_alive(server)
    memory = server.memory()
    end = snapshot(pool, server)
    grown = memory.get("VmRSS", 0) - baseline.get("VmRSS", 0)
    connections = len(chosen)
    member_rooms = members * rooms_each
    return {
        "endpoint": endpoint,
        "connections": connections,
        "members": members,
        "rooms_each": rooms_each,
        "member_rooms": member_rooms,
        "rooms": params.rooms,
        "connect_seconds": round(elapsed, 3),
        "handshakes_per_s": connections / max(elapsed, 1e-9),
        "member_rooms_per_s": member_rooms / max(elapsed, 1e-9),
        "cpu_ms_per_handshake": server_cpu * 1000 / connections,
        "cpu_ms_per_member_room": server_cpu * 1000 / member_rooms,
        "server_cpu_pct": window["server_cpu_pct"],
        "redis_cpu_pct": window["redis_cpu_pct"],
        "store_cpu_pct": window["store_cpu_pct"],
        "client_cpu_pct": window["client_cpu_pct"],
        "other_cpu_pct": window["other_cpu_pct"],
        "baseline_rss_mb": baseline.get("VmRSS", 0) / 2**20,
        "rss_mb": memory.get("VmRSS", 0) / 2**20,
        "kib_per_connection": grown / 1024 / connections,
        "bytes_per_member_room": grown / member_rooms,
        "open": end.total("open"),
        **issues(end),
    }


# --- join ----------------------------------------------------------------------------------------


def join_members(params: JoinParams, count: int, prefix: str) -> list[Member]:
    """``count`` members of ``params.rooms_each`` rooms each; blocks of ``room_size`` members share their rooms."""
    return [
        (",".join(f"{prefix}{index // params.room_size}-{k}" for k in range(params.rooms_each)), f"j{index}", "member")
        for index in range(count)
    ]


def join_timed(pool: WorkerPool, server: Server, common: Common, members: list[Member], endpoint: str) -> list[float]:
    """Time each member joining its rooms, one member at a time, in client process 0; the seconds of each.

    On v1 a member's connections come from one source address (one device opening one per room).
    """
    addressed: list[tuple[str, str, str, str]] = []
    for rooms, name, role in members:
        addressed.append((rooms, name, role, source_address(server.opened)))
        server.opened += len(rooms.split(",")) if endpoint == V1 else 1
    arguments = {
        "port": server.port,
        "members": addressed,
        "query": common.query,
        "deflate": common.deflate,
        "wait": common.connect_timeout,
        "endpoint": endpoint,
    }
    reply = pool.call_one(0, "join_timed", arguments, common.connect_timeout * max(1, len(members)) + 10)
    if reply["failed"]:
        alive = "" if server.alive else " (the server exited)"
        samples = "; ".join(reply["failures"])[:300]
        raise ScenarioFailed(f"{reply['failed']} of {len(members)} members did not join{alive}: {samples}")
    seconds: list[float] = reply["seconds"]
    return seconds


def run_join(
    pool: WorkerPool, server: Server, common: Common, params: JoinParams, members: int, endpoint: str = V1
) -> Row:
    """``members`` join ``rooms_each`` rooms each, one after the other: the time each one takes.

    v1: the member opens one connection per room at once, timed until its last welcome (handshakes
    included). ``/ws``: every member's connection is opened first (not timed); then each one sends
    its ``join`` frames at once, timed until its last welcome. ``warmup`` members join first, in
    rooms of their own, and are not counted.
    """
    warm = join_members(params, params.warmup, "warm")
    counted = join_members(params, members, "join")
    if endpoint == WS:
        everyone = [("", name, role) for _, name, role in warm + counted]
        connect(pool, server, common, [everyone] + [[] for _ in range(pool.count - 1)], WS)
    if warm:
        join_timed(pool, server, common, warm, endpoint)
    start = snapshot(pool, server)
    seconds = join_timed(pool, server, common, counted, endpoint)
    end = snapshot(pool, server)
    check_alive(server)
    window = window_figures(start, end)
    server_cpu = end.server_cpu_since(start)
    times = [1000 * value for value in seconds]
    return {
        "endpoint": endpoint,
        "members": members,
        "rooms_each": params.rooms_each,
        "room_size": params.room_size,
        "mean_ms": sum(times) / len(times) if times else None,
        "p50_ms": latency.nearest_rank(times, 0.50),
        "p99_ms": latency.nearest_rank(times, 0.99),
        "max_ms": latency.nearest_rank(times, 1.0),
        "cpu_ms_per_member": server_cpu * 1000 / members,
        "seconds": window["seconds"],
        "server_cpu_pct": window["server_cpu_pct"],
        "redis_cpu_pct": window["redis_cpu_pct"],
        "store_cpu_pct": window["store_cpu_pct"],
        "client_cpu_pct": window["client_cpu_pct"],
        "other_cpu_pct": window["other_cpu_pct"],
        "open": end.total("open"),
        **issues(end),
    }
