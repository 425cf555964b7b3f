"""The ``soak`` scenario: connections that come and go for minutes, and what the server keeps of them.

``steady`` members (40) join ``rooms`` rooms (20; member i in room ``soak{i mod rooms}``) on v1 and
stay. A filler per room then sends ``fill`` messages (1000, chat's ``CHAT_HISTORY_SIZE``), so that
every room holds a full history before the churn: the server's resident memory grows by what
that history costs (measured: ``history_mib``), and stays there, as the memory store keeps the
latest ``CHAT_HISTORY_SIZE`` per room. Then ``churners`` clients (60) loop for ``duration``
seconds (420): connect to a random room, send 1-5 messages with a ``ref``, wait for the acks,
leave by a clean close, a TCP reset or a stall (``soak_client.py``), with the weights of ``mix``.

Measured: the server's RSS and open file descriptors when the steady members joined, when the
churn begins, every ``sample`` s (5) of it, and at the end; connection cycles and acknowledged messages; then, once the
churners stopped, every steady member against every acknowledged message of its room (each once,
in the order of their seqs): what it missed, got twice or out of order; the fds and RSS once the
server gave back what the last churners held (at most ``settle`` s), and the tracebacks in its
log. The targets (the issue's): RSS at the end within ``start + history + 15 MiB``, flat over the
last half of the churn (a linear fit), the fds back to where they were, nothing missed, doubled or
reordered, no traceback.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmark import procfs
from benchmark.pool import Reply, WorkerPool
from benchmark.scenarios import (
    CALL_TIMEOUT,
    PER_ADDRESS,
    Common,
    Row,
    ScenarioFailed,
    check_alive,
    source_address,
    spread,
)
from benchmark.servers import Server
from benchmark.soak_client import LEAVES

MIB = 2**20
HISTORY_SIZE = 1000
"""chat's default ``CHAT_HISTORY_SIZE``: messages each room keeps on ``memory://`` and Redis."""
RSS_ALLOWANCE_MIB = 15.0
"""The issue's allowance: RSS at the end may exceed the start (history included) by this much."""
FLAT_MIB_PER_MINUTE = 0.5
"""RSS is flat over the last half when its fitted slope there is at most this."""
FD_ALLOWANCE = 3
"""Open fds at the end may exceed the start by this many (a log file reopened, a timer's fd)."""
PROGRESS_EVERY = 30.0
"""Seconds between two progress lines on stderr."""
STOP_WITHIN = 30.0
"""The most the churners may take to finish their cycle once told to stop (a connect, acks, a stall)."""
QUIET = 1.0
"""Seconds without a new receipt after which the steady members are checked as they are."""


@dataclass(frozen=True)
class SoakParams:
    duration: float = 420.0
    """Seconds of churn."""
    churners: int = 60
    steady: int = 40
    rooms: int = 20
    mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LEAVES, 1.0))
    """Weight of each way to leave: clean, reset, stall."""
    batch: bool = False
    """Steady members and churners connect with ``batch=1``."""
    fill: int = HISTORY_SIZE
    """Messages sent into each room before the churn (0: none); chat keeps the latest CHAT_HISTORY_SIZE (1000)."""
    size: int = 100
    """Characters of each message's text (its 20-digit tag included)."""
    messages: tuple[int, int] = (1, 5)
    """Messages per cycle, drawn uniformly."""
    stall: tuple[float, float] = (0.5, 2.0)
    """Seconds a stalling churner stops reading before it closes, drawn uniformly."""
    sample: float = 5.0
    """Seconds between two readings of the server's RSS and fds."""
    settle: float = 20.0
    """The most the server may take after the churn to give the fds back."""
    drain: float = 10.0
    """The most the last messages may take to reach the steady members after the churn."""
    fill_within: float = 120.0


def parse_mix(text: str) -> dict[str, float]:
    """``clean,reset,stall`` (equal weights), ``clean=2,reset=1`` (weights), or a mix of both."""
    mix: dict[str, float] = {}
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        kind, _, weight = part.partition("=")
        if kind not in LEAVES:
            raise ValueError(f"unknown way to leave {kind!r}: choose from {', '.join(LEAVES)}")
        mix[kind] = float(weight) if weight else 1.0
        if not mix[kind] >= 0:
            raise ValueError(f"{part}: a weight is 0 or more")
    if not any(mix.values()):
        raise ValueError(f"{text!r}: no way to leave has a weight")
    return mix


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(seconds, MiB)`` samples, in MiB per minute; None with fewer than 2."""
    if len(samples) < 2:
        return None
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_v = sum(v for _, v in samples) / len(samples)
    spread_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread_t == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread_t


def check(accepted: Sequence[tuple[str, int, int]], steady: Sequence[tuple[str, str, list[int]]]) -> Row:
    """Every steady member ``(room, name, tags received)`` against the acknowledged ``(room, seq, tag)``.

    Each acknowledged message of a member's room must arrive once, in the order of the seqs the server
    gave them. ``extra``: messages received that nobody saw acknowledged (a churner that left first).
    ``seq_clashes``: two acknowledged messages of a room with one seq (a server bug).
    """
    rooms: dict[str, dict[int, int]] = {}
    seqs: dict[str, Counter[int]] = {}
    for room, seq, tag in accepted:
        rooms.setdefault(room, {})[tag] = seq
        seqs.setdefault(room, Counter())[seq] += 1
    expected = missed = doubled = out_of_order = extra = members_missing = 0
    samples: list[str] = []
    for room, name, tags in steady:
        wanted = rooms.get(room, {})
        mine = [tag for tag in tags if tag in wanted]
        extra += len(tags) - len(mine)
        counts = Counter(mine)
        missing = sum(1 for tag in wanted if tag not in counts)
        expected += len(wanted)
        missed += missing
        doubled += sum(count - 1 for count in counts.values())
        out_of_order += sum(1 for before, after in itertools.pairwise(mine) if wanted[after] < wanted[before])
        if missing:
            members_missing += 1
            if len(samples) < 5:
                first = min(wanted[tag] for tag in wanted if tag not in counts)
                samples.append(f"{name} in {room}: {missing} of {len(wanted)} missing, the first seq {first}")
    return {
        "expected": expected,
        "missed": missed,
        "doubled": doubled,
        "out_of_order": out_of_order,
        "extra": extra,
        "members_missing": members_missing,
        "seq_clashes": sum(count - 1 for counter in seqs.values() for count in counter.values()),
        "miss_samples": samples,
    }


def held_messages(accepted: Sequence[tuple[str, int, int]], keep: int = HISTORY_SIZE) -> int:
    """Messages the rooms hold at the end: each room's acknowledged messages, ``keep`` at most."""
    counts = Counter(room for room, _, _ in accepted)
    return sum(min(keep, count) for count in counts.values())


def tracebacks(text: str) -> tuple[int, list[str]]:
    """How many tracebacks a log holds, and the last line of the first few (the exception)."""
    lines = text.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("Traceback")]
    samples: list[str] = []
    for start in starts[:3]:
        tail = next((line for line in lines[start + 1 :] if line and not line[0].isspace()), "")
        samples.append(tail[:200])
    return len(starts), samples


@dataclass(frozen=True)
class Reading:
    """The server at one moment (seconds since the churn began)."""

    at: float
    rss: int
    fds: int
    redis_rss: int | None
    redis_links: int
    """Of ``fds``, the connections to the server's redis-server (its client's pool, which grows to its bound)."""


def read(server: Server, started: float) -> Reading:
    redis = procfs.memory(server.redis.pid).get("VmRSS") if server.redis is not None else None
    links = procfs.connections_to(server.process.pid, server.redis.port) if server.redis is not None else 0
    return Reading(
        round(time.monotonic() - started, 1),
        server.memory().get("VmRSS", 0),
        procfs.tree_open_fds(server.process.pid),
        redis,
        links,
    )


def harness_cpu() -> float:
    return procfs.cpu_seconds(os.getpid())


def own_fds(reading: Reading) -> int:
    """The fds that come and go with clients: the Redis client's pool grows to its bound under load, and stays."""
    return reading.fds - reading.redis_links


def totals(replies: list[Reply], key: str) -> int:
    return sum(int(reply[key]) for reply in replies)


def merged(replies: list[Reply], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for reply in replies:
        total.update({str(name): int(count) for name, count in reply[key].items()})
    return dict(sorted(total.items()))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def server_log(server: Server) -> str:
    """Every log of the server (each start has its own)."""
    stem = server.log_stem
    texts = []
    for path in sorted(stem.parent.glob(f"{stem.name}*.log")):
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return "\n".join(texts)


def run_soak(pool: WorkerPool, server: Server, common: Common, params: SoakParams) -> Row:
    """Steady members join, the rooms fill, churners come and go for ``params.duration`` s; the figures."""
    query = common.query + ("&batch=1" if params.batch else "")
    rooms = [f"soak{index}" for index in range(params.rooms)]
    steady = [(rooms[index % params.rooms], f"steady{index}") for index in range(params.steady)]
    shares = spread(steady, pool.count)
    arguments = []
    for process, share in enumerate(shares):
        members = [(room, name, source_address(server.opened + index)) for index, (room, name) in enumerate(share)]
        server.opened += len(share)
        arguments.append(
            {
                "port": server.port,
                "query": query,
                "wait": common.connect_timeout,
                "process": process,
                "size": params.size,
                "members": members,
            }
        )
    before = read(server, time.monotonic())
    replies = pool.call_each("soak_join", arguments, common.connect_timeout * 2 + 10)
    failed = totals(replies, "failed")
    if failed:
        samples = [sample for reply in replies for sample in reply["failures"]]
        raise ScenarioFailed(f"{failed} of {params.steady} steady members did not join: {'; '.join(samples)[:300]}")
    time.sleep(1.0)
    check_alive(server)
    joined = read(server, time.monotonic())

    fill_seconds, filled = None, 0
    if params.fill:
        filled_at = time.monotonic()
        fillers = [(room, source_address(server.opened + index * PER_ADDRESS)) for index, room in enumerate(rooms)]
        server.opened += len(rooms) * PER_ADDRESS
        within = params.fill_within
        filled = totals(
            pool.call_each(
                "soak_fill",
                [{"rooms": share, "count": params.fill, "within": within} for share in spread(fillers, pool.count)],
                within + 10,
            ),
            "acked",
        )
        fill_seconds = time.monotonic() - filled_at
        time.sleep(1.0)
        check_alive(server)

    churners = [
        (f"churner{index}", source_address(server.opened + index * PER_ADDRESS)) for index in range(params.churners)
    ]
    server.opened += params.churners * PER_ADDRESS
    started = time.monotonic()
    start = read(server, started)
    cpu_start = server.cpu_seconds(), pool.cpu_seconds(), procfs.system_cpu_seconds()[0], harness_cpu()
    start_arguments = {
        "rooms": rooms,
        "mix": params.mix,
        "messages": params.messages,
        "stall": params.stall,
    }
    shares_of_churners = spread(churners, pool.count)
    pool.call_each("soak_start", [{**start_arguments, "churners": share} for share in shares_of_churners], CALL_TIMEOUT)
    samples = [start]
    ends_at = started + params.duration
    next_progress = started + PROGRESS_EVERY
    while time.monotonic() < ends_at:
        time.sleep(max(0.0, min(params.sample, ends_at - time.monotonic())))
        samples.append(read(server, started))
        check_alive(server)
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY
            stats = pool.call("soak_stats", CALL_TIMEOUT)
            log(
                f"  soak {samples[-1].at:.0f} s: {totals(stats, 'cycles'):,} cycles, {totals(stats, 'acked'):,} acked, "
                f"RSS {samples[-1].rss / MIB:.1f} MiB, {samples[-1].fds} fds"
            )
    churned = time.monotonic() - started
    cpu_end = server.cpu_seconds(), pool.cpu_seconds(), procfs.system_cpu_seconds()[0], harness_cpu()
    stopped = pool.call("soak_stop", STOP_WITHIN + 10, within=STOP_WITHIN)
    check_alive(server)
    drained = drain(pool, params.drain)

    # The server gives back the fds of the last churners (a stalled socket may take ~10 s): then the end.
    settle_until = time.monotonic() + params.settle
    while True:
        latest = read(server, started)
        samples.append(latest)
        if own_fds(latest) <= own_fds(start) + FD_ALLOWANCE or time.monotonic() >= settle_until:
            break
        time.sleep(0.5)
    settled = time.monotonic() - started - churned
    end = read(server, started)
    samples.append(end)
    check_alive(server)

    reports = pool.call("soak_report", CALL_TIMEOUT * 4)
    accepted = [(str(room), int(seq), int(tag)) for report in reports for room, seq, tag in report["accepted"]]
    received = [(str(room), str(name), list(tags)) for report in reports for room, name, tags in report["steady"]]
    checked = check(accepted, received)
    count, trace_samples = tracebacks(server_log(server))
    row = soak_row(params, samples, start, end, joined, before, churned)
    server_cpu = sum(cpu_end[0]) - sum(cpu_start[0])
    client_cpu = cpu_end[1] - cpu_start[1]
    other_cpu = (cpu_end[2] - cpu_start[2]) - server_cpu - client_cpu - (cpu_end[3] - cpu_start[3])
    row.update(checked)
    row.update(
        fill_seconds=round(fill_seconds, 2) if fill_seconds is not None else None,
        history_messages=held_messages(accepted),
        settle_seconds=round(settled, 1),
        drained=drained,
        cycles=totals(reports, "cycles"),
        sent=totals(reports, "sent"),
        acked=len(accepted),
        acked_in_churn=len(accepted) - filled,
        unacked=totals(reports, "unacked"),
        cycles_per_s=totals(reports, "cycles") / max(churned, 1e-9),
        leaves=merged(reports, "leaves"),
        failures=merged(reports, "failures"),
        closes=merged(reports, "closes"),
        cancelled=totals(stopped, "cancelled"),
        steady_lost=totals(reports, "steady_lost"),
        errors=totals(reports, "errors"),
        error_samples=[sample for report in reports for sample in report["error_samples"]][:3],
        foreign=totals(reports, "foreign"),
        tracebacks=count,
        traceback_samples=trace_samples,
        server_cpu_pct=100 * server_cpu / max(churned, 1e-9),
        client_cpu_pct=100 * client_cpu / max(churned, 1e-9),
        other_cpu_pct=max(0.0, 100 * other_cpu / max(churned, 1e-9)),
    )
    row["targets"] = targets(row)
    notes = [f"{name}: {verdict['detail']}" for name, verdict in row["targets"].items() if not verdict["met"]]
    if row["cancelled"]:
        notes.append(f"{row['cancelled']} churners did not finish their cycle within {STOP_WITHIN:g} s")
    if notes:
        row["note"] = "missed targets: " + "; ".join(notes)
    return row


def drain(pool: WorkerPool, limit: float) -> bool:
    """Wait until the steady members' receipts stop changing for QUIET s (at most ``limit`` s)."""
    deadline = time.monotonic() + limit
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        received = totals(pool.call("soak_stats", CALL_TIMEOUT), "received")
        now = time.monotonic()
        if received != last:
            last, quiet_since = received, now
        elif now - quiet_since >= QUIET:
            return True
        time.sleep(0.2)
    return False


def soak_row(
    params: SoakParams,
    samples: list[Reading],
    start: Reading,
    end: Reading,
    joined: Reading,
    before: Reading,
    churned: float,
) -> Row:
    """The memory and fd figures of a run from its readings."""
    during = [sample for sample in samples if sample.at <= churned + 0.5]
    last_half = [(sample.at, sample.rss / MIB) for sample in during if sample.at >= churned / 2]
    peak = max(sample.rss for sample in samples)
    redis = [sample.redis_rss for sample in (start, end) if sample.redis_rss is not None]
    return {
        "duration_s": params.duration,
        "churned_s": round(churned, 1),
        "churners": params.churners,
        "steady": params.steady,
        "rooms": params.rooms,
        "mix": params.mix,
        "batch": params.batch,
        "fill": params.fill,
        "rss_before_mib": before.rss / MIB,
        "rss_joined_mib": joined.rss / MIB,
        "rss_start_mib": start.rss / MIB,
        "history_mib": (start.rss - joined.rss) / MIB if params.fill else None,
        "rss_peak_mib": peak / MIB,
        "rss_end_mib": end.rss / MIB,
        "rss_growth_mib": (end.rss - start.rss) / MIB,
        "rss_slope_last_half_mib_per_min": slope_per_minute(last_half),
        "redis_rss_start_mib": redis[0] / MIB if len(redis) == 2 else None,
        "redis_rss_end_mib": redis[1] / MIB if len(redis) == 2 else None,
        "fds_joined": joined.fds,
        "fds_start": start.fds,
        "fds_peak": max(sample.fds for sample in samples),
        "fds_end": end.fds,
        "redis_links_start": start.redis_links,
        "redis_links_end": end.redis_links,
        "rss_samples": [[sample.at, round(sample.rss / MIB, 2), sample.fds, sample.redis_links] for sample in samples],
    }


def targets(row: Row) -> dict[str, dict[str, object]]:
    """The issue's targets, each met or not, with the figures that decide it."""
    limit = row["rss_start_mib"] + RSS_ALLOWANCE_MIB
    slope = row["rss_slope_last_half_mib_per_min"]
    history = row["history_mib"]
    held = f"{row['rss_start_mib']:.1f}"
    if history is not None:
        held = f"{row['rss_joined_mib']:.1f} + history {history:.1f}"
    trouble = row["missed"] + row["doubled"] + row["out_of_order"] + row["steady_lost"]
    links = (row.get("redis_links_start") or 0, row.get("redis_links_end") or 0)
    return {
        "rss": {
            "met": row["rss_end_mib"] <= limit,
            "detail": f"RSS end {row['rss_end_mib']:.1f} MiB <= {held} + {RSS_ALLOWANCE_MIB:g} = {limit:.1f} MiB",
        },
        "flat": {
            "met": slope is not None and slope <= FLAT_MIB_PER_MINUTE,
            "detail": f"RSS slope over the last half {'-' if slope is None else f'{slope:+.2f}'} MiB/min "
            f"<= {FLAT_MIB_PER_MINUTE:g}",
        },
        "fds": {
            "met": row["fds_end"] - links[1] <= row["fds_start"] - links[0] + FD_ALLOWANCE,
            "detail": f"fds {row['fds_start']} at the start, {row['fds_end']} at the end (+{FD_ALLOWANCE} allowed)"
            + (f"; of them, connections to redis-server (not counted) {links[0]} and {links[1]}" if any(links) else ""),
        },
        "delivery": {
            "met": trouble == 0 and row["expected"] > 0,
            "detail": f"of {row['expected']:,} (member, message) pairs: {row['missed']} missed, "
            f"{row['doubled']} doubled, {row['out_of_order']} out of order; "
            f"{row['steady_lost']} steady members lost their connection",
        },
        "tracebacks": {"met": row["tracebacks"] == 0, "detail": f"{row['tracebacks']} tracebacks in the server log"},
    }
