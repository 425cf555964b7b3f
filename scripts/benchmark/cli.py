"""``scripts/bench``: parse the options, run each scenario against each server, print the tables (or JSON)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from benchmark import procfs, report, scenarios, soak, stored, storm
from benchmark.client import ENDPOINTS, V1, WS
from benchmark.pool import WorkerError, WorkerPool
from benchmark.probe import ProbeFailed
from benchmark.scenarios import (
    Common,
    FanoutParams,
    IdleParams,
    JoinParams,
    RoomsParams,
    Row,
    ScenarioFailed,
    SlowParams,
)
from benchmark.servers import KINDS, ROOT, Kind, Server, ServerFailed, ServerOptions, redis_available
from benchmark.soak import SoakParams, parse_mix
from benchmark.stored import HistoryParams, RestartParams
from benchmark.stores import StoreFailed
from benchmark.storm import DROPS, StormParams

SCENARIOS = ("fanout", "rooms", "slow_consumer", "idle", "join", "restart", "history", "storm", "soak")
LONG_SCENARIOS = ("storm", "soak")
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name not in LONG_SCENARIOS)
"""What runs without ``--scenario``: every scenario but ``storm`` and ``soak`` (minutes per server)."""
EVERY_KIND = ("chat", "chat-delay", "chat-redis", "seed", "raw")
DEFAULT_SERVERS: dict[str, tuple[str, ...]] = {
    "fanout": ("chat", "chat-sqlite", "chat-delay", "chat-redis", "chat-redis-pg", "seed", "raw"),
    "rooms": ("chat", "chat-sqlite", "chat-delay", "chat-redis", "seed", "raw"),
    "slow_consumer": EVERY_KIND,
    "idle": EVERY_KIND,
    "join": ("chat", "chat-redis"),
    "restart": ("chat-sqlite", "chat-redis-pg"),
    "history": ("chat", "chat-sqlite", "chat-redis-pg"),
    "storm": ("chat", "chat-redis2", "seed", "raw"),
    "soak": ("chat", "chat-redis"),
}
"""The servers each scenario runs on unless ``--servers`` names them."""
WS_SERVERS = ("chat", "chat-redis")
"""Of those, the servers that run the ``/ws`` variants unless ``--servers`` names them (the references cannot)."""
ENDPOINT_NAMES = {V1: "/ws/{room}", WS: "/ws"}
T = TypeVar("T")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark the chat server against the seed and raw references with real WebSocket clients.",
        epilog="Each scenario starts every server itself on a free loopback port; ratios between servers are "
        "the figures that count.",
    )
    parser.add_argument(
        "--scenario",
        help=f"comma-separated, from {', '.join(SCENARIOS)}, or all (default: every one but storm and soak)",
    )
    defaults = "; ".join(f"{name}: {','.join(kinds)}" for name, kinds in DEFAULT_SERVERS.items())
    parser.add_argument(
        "--servers", help=f"comma-separated, from {', '.join(KINDS)}, for every scenario (default: {defaults})"
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        help="seconds measured: the fanout window, each rooms step; storm: the most the members may take to be "
        "welcomed again after the drop (20); soak: seconds of churn (420)",
    )
    parser.add_argument(
        "--members",
        help="the scenario's size, comma-separated for several: fanout room size (200,1000), slow_consumer room size "
        "(50), idle connections (5000,15000) and members in --rooms-each rooms (1000), join members (500), "
        "rooms connections (2000), storm members (10000)",
    )
    parser.add_argument(
        "--endpoints",
        default=",".join(ENDPOINTS),
        help="fanout, idle, join: the endpoints their members use, comma-separated: v1 (/ws/{room}, a connection "
        "per room) and ws (/ws, one connection, a join frame per room) (v1,ws: side by side)",
    )
    parser.add_argument(
        "--rooms-each", type=positive_int, help="idle (its members variants), join: rooms each member is in (10)"
    )
    parser.add_argument(
        "--room-size",
        help="members per room: rooms (10); storm, comma-separated for several (150; 150,10 runs both)",
    )
    parser.add_argument(
        "--drops",
        help="storm: how every member drops, comma-separated: restart (the server process restarts on its port) "
        "and cut (the clients reset their connections, the server stays up) (restart,cut)",
    )
    parser.add_argument(
        "--publish-interval",
        type=positive_float,
        help="storm: seconds between two messages of each room's publisher (0.2)",
    )
    parser.add_argument(
        "--rooms",
        type=positive_int,
        help="idle: rooms the connections spread over (100); restart: rooms the stored messages spread over (1000); "
        "soak: rooms of the steady members and churners (20)",
    )
    parser.add_argument(
        "--churners",
        type=positive_int,
        help="soak: clients that loop connect, send 1-5 messages, wait for the acks, leave (60)",
    )
    parser.add_argument("--steady", type=positive_int, help="soak: members that stay in the rooms all along (40)")
    parser.add_argument(
        "--leave-mix",
        help="soak: how churners leave, comma-separated, each with an optional weight: clean (close frame), reset "
        "(TCP RST), stall (stop reading, then close) (clean,reset,stall: equal; e.g. clean=2,reset=1,stall=1)",
    )
    parser.add_argument("--batch", action="store_true", help="soak: steady members and churners connect with batch=1")
    parser.add_argument(
        "--fill",
        type=int,
        help="soak: messages sent into each room before the churn, so that the rooms hold their full history "
        "from the start (1000, chat's CHAT_HISTORY_SIZE; 0: none)",
    )
    parser.add_argument(
        "--stored", type=positive_int, help="restart, history: messages in the store (1,000,000; history: one room)"
    )
    parser.add_argument("--pages", type=positive_int, help="history: pages of 50 requested at random depths (2000)")
    parser.add_argument(
        "--rates", help="rooms: messages per second per client to try, ascending (0.5 x 1.5^n, then 2 bisection steps)"
    )
    parser.add_argument(
        "--p99-limit", type=positive_float, help="rooms: a rate is held while p99 stays under this, ms (100)"
    )
    parser.add_argument("--messages", type=positive_int, help="slow_consumer: messages to publish (5000)")
    parser.add_argument("--message-bytes", type=int, help="text size (fanout/rooms 100, slow_consumer 2048)")
    parser.add_argument(
        "--window", type=positive_int, help="fanout/slow_consumer: unacknowledged messages in flight (10)"
    )
    parser.add_argument("--clients", type=positive_int, default=2, help="client processes (2)")
    parser.add_argument(
        "--client-pace-ms",
        type=float,
        default=1.0,
        help="pause per event-loop iteration of a client process, so that it reads in batches; adds at most "
        "this to every latency (1.0; 0 reads every frame as it comes, at more CPU for clients and server)",
    )
    parser.add_argument("--concurrency", type=positive_int, help="handshakes in flight per client process (100)")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate (chat gets it on)")
    parser.add_argument(
        "--query", action="append", default=[], metavar="K=V", help="extra query parameter on every connection"
    )
    parser.add_argument(
        "--chat-arg", action="append", default=[], metavar="ARG", help="extra argument for python -m chat (repeatable)"
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the server on the first CPU and the clients and harness on the others, so that the server has "
        "a core of its own (default on with 2 CPUs or more; --no-pin lets the scheduler place everything)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to leave the CPUs alone (60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a server again when other processes took more than 15%% of a core while it was measured (2)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="run every scenario's servers and variants this many times, in turn (v1, /ws, v1, /ws, ...), and "
        "report the median of each figure (1)",
    )
    parser.add_argument("--server-log-level", default="warning", help="log level of every server (warning)")
    parser.add_argument("--quick", action="store_true", help="tiny parameters: a smoke run of a few seconds per server")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables go to stderr)")
    parser.add_argument("--logs", type=Path, help="directory for the server logs (default: a temporary one)")
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def given(value: T | None, default: T) -> T:
    """An option's value when it was given (0 included), else the scenario's default."""
    return default if value is None else value


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


@dataclasses.dataclass
class Plan:
    scenarios: list[str]
    servers: dict[str, list[str]]
    """The servers of each scenario chosen."""
    common: Common
    fanout: FanoutParams
    rooms: RoomsParams
    slow: SlowParams
    idle: IdleParams
    restart: RestartParams = dataclasses.field(default_factory=RestartParams)
    history: HistoryParams = dataclasses.field(default_factory=HistoryParams)
    join: JoinParams = dataclasses.field(default_factory=JoinParams)
    endpoints: tuple[str, ...] = ENDPOINTS
    ws_servers: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """The servers of each scenario chosen that run its ``/ws`` variants."""
    storm: StormParams = dataclasses.field(default_factory=StormParams)
    soak: SoakParams = dataclasses.field(default_factory=SoakParams)


def plan(arguments: argparse.Namespace) -> Plan:
    if arguments.scenario is None:
        chosen = DEFAULT_SCENARIOS
    else:
        chosen = SCENARIOS if arguments.scenario == "all" else tuple(arguments.scenario.split(","))
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)} or all")
    named = [name for name in (arguments.servers or "").split(",") if name]
    unknown = [name for name in named if name not in KINDS]
    if unknown:
        raise SystemExit(f"unknown server {unknown[0]!r}: choose from {', '.join(KINDS)}")
    servers = {name: named or list(DEFAULT_SERVERS[name]) for name in chosen}
    ws_servers = {name: named or [kind for kind in servers[name] if kind in WS_SERVERS] for name in chosen}
    endpoints = tuple(part for part in arguments.endpoints.split(",") if part)
    unknown = [part for part in endpoints if part not in ENDPOINTS]
    if unknown or not endpoints:
        raise SystemExit(f"unknown endpoint {(unknown or [''])[0]!r}: choose from {', '.join(ENDPOINTS)}")
    query = "".join(f"&{item}" for item in arguments.query)
    common = Common(deflate=arguments.deflate, query=query)
    fanout, rooms, slow, idle = FanoutParams(), RoomsParams(), SlowParams(), IdleParams()
    restart, history, join, storms = RestartParams(), HistoryParams(), JoinParams(), StormParams()
    soaks = SoakParams()
    if arguments.quick:
        common = dataclasses.replace(common, connect_timeout=5.0)
        fanout = FanoutParams(members=[20], duration=1.0, warmup=0.3, stall=2.0, drain=3.0)
        rooms = RoomsParams(connections=40, room_size=10, rates=[1, 5], step=1.0, settle=0.3, refine=0)
        slow = SlowParams(members=6, messages=300, stall=2.0, limit=8.0, drain=2.0)
        idle = IdleParams(connections=[60], rooms=10, settle=0.3, members=[10])
        join = JoinParams(members=[10], warmup=2)
        restart = RestartParams(messages=2000, rooms=10, timeout=20.0)
        history = HistoryParams(messages=2000, pages=100, warmup=5)
        storms = StormParams(
            members=20, room_sizes=[5], interval=0.25, settle=0.2, warmup=0.5, tail=0.5, limit=20.0, drain=3.0
        )
        soaks = SoakParams(duration=8.0, churners=10, steady=6, rooms=3, fill=100, sample=1.0)
    members = ints(arguments.members or "") or None
    first = members[0] if members else None
    rates = floats(arguments.rates or "") or None
    room_sizes = ints(arguments.room_size or "") or None
    if room_sizes is not None and min(room_sizes) < 1:
        raise SystemExit("--room-size: every size must be 1 or more")
    drops = [part for part in (arguments.drops or "").split(",") if part] or None
    unknown = [part for part in drops or [] if part not in DROPS]
    if unknown:
        raise SystemExit(f"unknown drop {unknown[0]!r}: choose from {', '.join(DROPS)}")
    size = arguments.message_bytes
    common = dataclasses.replace(common, concurrency=given(arguments.concurrency, common.concurrency))
    fanout = dataclasses.replace(
        fanout,
        members=given(members, fanout.members),
        duration=given(arguments.duration, fanout.duration),
        window=given(arguments.window, fanout.window),
        size=given(size, fanout.size),
    )
    rooms = dataclasses.replace(
        rooms,
        connections=given(first, rooms.connections),
        room_size=room_sizes[0] if room_sizes else rooms.room_size,
        rates=given(rates, rooms.rates),
        step=given(arguments.duration, rooms.step),
        size=given(size, rooms.size),
        p99_limit_ms=given(arguments.p99_limit, rooms.p99_limit_ms),
    )
    slow = dataclasses.replace(
        slow,
        members=given(first, slow.members),
        messages=given(arguments.messages, slow.messages),
        size=given(size, slow.size),
        window=given(arguments.window, slow.window),
    )
    idle = dataclasses.replace(
        idle,
        connections=given(members, idle.connections),
        rooms=given(arguments.rooms, idle.rooms),
        members=given(members, idle.members),
        rooms_each=given(arguments.rooms_each, idle.rooms_each),
    )
    join = dataclasses.replace(
        join, members=given(members, join.members), rooms_each=given(arguments.rooms_each, join.rooms_each)
    )
    restart = dataclasses.replace(
        restart, messages=given(arguments.stored, restart.messages), rooms=given(arguments.rooms, restart.rooms)
    )
    history = dataclasses.replace(
        history, messages=given(arguments.stored, history.messages), pages=given(arguments.pages, history.pages)
    )
    storms = dataclasses.replace(
        storms,
        members=given(first, storms.members),
        room_sizes=given(room_sizes, storms.room_sizes),
        drops=given(drops, storms.drops),
        interval=given(arguments.publish_interval, storms.interval),
        limit=given(arguments.duration, storms.limit),
        size=given(size, storms.size),
    )
    try:
        mix = parse_mix(arguments.leave_mix) if arguments.leave_mix is not None else soaks.mix
    except ValueError as exc:
        raise SystemExit(f"--leave-mix: {exc}") from None
    soaks = dataclasses.replace(
        soaks,
        duration=given(arguments.duration, soaks.duration),
        churners=given(arguments.churners, soaks.churners),
        steady=given(arguments.steady, soaks.steady),
        rooms=given(arguments.rooms, soaks.rooms),
        mix=mix,
        batch=arguments.batch or soaks.batch,
        fill=given(arguments.fill, soaks.fill),
        size=given(size, soaks.size),
    )
    if "soak" in chosen and soaks.size < 20:
        raise SystemExit("--message-bytes: soak's texts start with a 20-digit tag")
    if "soak" in chosen and soaks.fill < 0:
        raise SystemExit("--fill: 0 or more")
    if "storm" in chosen and storms.size < 20:
        raise SystemExit("--message-bytes: storm's texts start with a 20-digit stamp")
    if "storm" in chosen and storms.members < 2 * storm.storm_rooms(storms.members, min(storms.room_sizes)):
        raise SystemExit("storm needs rooms of 2 members at least (a publisher and one other): raise --room-size")
    if slow.members < 3:
        raise SystemExit("slow_consumer needs at least 3 members (publisher, slow one, one other)")
    if history.messages < history.limit:
        raise SystemExit(f"history needs at least a page of stored messages ({history.limit})")
    return Plan(
        list(chosen),
        servers,
        common,
        fanout,
        rooms,
        slow,
        idle,
        restart,
        history,
        join,
        endpoints,
        ws_servers,
        storms,
        soaks,
    )


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run of a scenario on each of its servers."""

    label: str
    run: Callable[[WorkerPool, Server], Row]
    endpoint: str = V1
    pair: str | None = None
    """The label of the v1 variant this ``/ws`` one is compared with (the tables' ``/v1`` columns)."""


def variants(name: str, plan: Plan) -> list[Variant]:
    """The runs of one scenario: one for each size (and, in fanout, idle and join, for each endpoint)."""
    common = plan.common
    if name == "fanout":
        params = plan.fanout
        return paired(plan, [(f"{members} members", fanout_run(common, params, members)) for members in params.members])
    if name == "rooms":
        label = f"{plan.rooms.connections} conns, rooms of {plan.rooms.room_size}"
        return [Variant(label, lambda pool, server: scenarios.run_rooms(pool, server, common, plan.rooms))]
    if name == "slow_consumer":
        label = f"{plan.slow.members} members, {plan.slow.messages} x {plan.slow.size} B"
        return [Variant(label, lambda pool, server: scenarios.run_slow_consumer(pool, server, common, plan.slow))]
    if name == "restart":
        label = f"{plan.restart.messages:,} messages in {plan.restart.rooms:,} rooms"
        return [Variant(label, lambda pool, server: stored.run_restart(server, plan.restart))]
    if name == "history":
        label = f"{plan.history.messages:,} messages in one room, pages of {plan.history.limit}"
        return [Variant(label, lambda pool, server: stored.run_history(server, plan.history))]
    if name == "storm":
        return [
            Variant(
                f"{plan.storm.members:,} members, rooms of {size}, {drop}",
                storm_run(common, plan.storm, size, drop),
            )
            for size in plan.storm.room_sizes
            for drop in plan.storm.drops
        ]
    if name == "soak":
        soaks = plan.soak
        mix = ",".join(f"{kind}={weight:g}" for kind, weight in soaks.mix.items())
        label = (
            f"{soaks.churners} churners, {soaks.steady} steady in {soaks.rooms} rooms, {soaks.duration:g} s, {mix}"
            + (", batch=1" if soaks.batch else "")
        )
        return [Variant(label, lambda pool, server: soak.run_soak(pool, server, common, soaks))]
    if name == "join":
        joins = plan.join
        return paired(
            plan,
            [(f"{size} members x {joins.rooms_each} rooms", join_run(common, joins, size)) for size in joins.members],
        )
    idle = plan.idle
    single = [Variant(f"{count} conns", idle_run(common, idle, count, 1)(V1)) for count in idle.connections]
    multi = [
        (f"{size} members x {idle.rooms_each} rooms", idle_run(common, idle, size, idle.rooms_each))
        for size in idle.members
    ]
    return (single if V1 in plan.endpoints else []) + paired(plan, multi)


EndpointRun = Callable[[str], Callable[[WorkerPool, Server], Row]]


def paired(plan: Plan, runs: list[tuple[str, EndpointRun]]) -> list[Variant]:
    """For each ``(label, run for an endpoint)``: its v1 variant, then its ``/ws`` one (those of ``--endpoints``)."""
    chosen: list[Variant] = []
    for label, run in runs:
        if V1 in plan.endpoints:
            chosen.append(Variant(label, run(V1)))
        if WS in plan.endpoints:
            pair = label if V1 in plan.endpoints else None
            chosen.append(Variant(f"{label}, /ws", run(WS), WS, pair))
    return chosen


def fanout_run(common: Common, params: FanoutParams, members: int) -> EndpointRun:
    return lambda endpoint: lambda pool, server: scenarios.run_fanout(pool, server, common, params, members, endpoint)


def idle_run(common: Common, params: IdleParams, members: int, rooms_each: int) -> EndpointRun:
    return lambda endpoint: (
        lambda pool, server: scenarios.run_idle(pool, server, common, params, members, rooms_each, endpoint)
    )


def join_run(common: Common, params: JoinParams, members: int) -> EndpointRun:
    return lambda endpoint: lambda pool, server: scenarios.run_join(pool, server, common, params, members, endpoint)


def storm_run(common: Common, params: StormParams, size: int, drop: str) -> Callable[[WorkerPool, Server], Row]:
    return lambda pool, server: storm.run_storm(pool, server, common, params, size, drop)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


QUIET_CPU = 0.10
"""Other processes are quiet while they use less than this share of one core."""
DISTURBED_PCT = 15.0
"""A run during which other processes took more than this (% of a core) is repeated (``--retries``)."""


def wait_quiet(pool: WorkerPool, limit: float) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until processes other than ours use < QUIET_CPU; (seconds waited, their share)."""
    started = time.monotonic()
    share = 0.0
    while True:
        before = procfs.system_cpu_seconds()[0] - pool.cpu_seconds() - procfs.cpu_seconds(os.getpid())
        time.sleep(0.5)
        after = procfs.system_cpu_seconds()[0] - pool.cpu_seconds() - procfs.cpu_seconds(os.getpid())
        share = (after - before) / 0.5
        waited = time.monotonic() - started
        if share < QUIET_CPU or waited >= limit:
            return waited, share


def unsupported(scenario: str, kind: Kind, endpoint: str = V1) -> str | None:
    """Why ``kind`` cannot run ``scenario`` on ``endpoint`` (here, or at all); None when it can."""
    if endpoint == WS and kind.chat_args is None:
        return "does not speak /ws (protocol v1.1)"
    if scenario == "restart" and kind.store is None:
        return "no durable store"
    if scenario == "history" and kind.chat_args is None:
        return "no history"
    if scenario == "soak" and not kind.acks:
        return "no acks to check the steady members against"
    if kind.redis and not redis_available():
        return "no redis-server on PATH"
    if kind.store is not None and importlib.util.find_spec(f"chat.stores.{kind.store}") is None:
        return f"this chat has no chat.stores.{kind.store}"
    return None


def run_one(
    pool: WorkerPool,
    name: str,
    kind_name: str,
    options: ServerOptions,
    variant: Variant,
    quiet_wait: float,
) -> Row:
    """Start the server, run the scenario, stop the server; any failure becomes the row's ``error``."""
    row: Row = {"server": kind_name, "variant": variant.label, "endpoint": variant.endpoint}
    if variant.pair is not None:
        row["v1_variant"] = variant.pair
    kind = KINDS[kind_name]
    reason = unsupported(name, kind, variant.endpoint)
    if reason:
        row.update(error=f"skipped: {reason}", skipped=True, wall_seconds=0.0)
        return row
    if quiet_wait > 0:
        waited, share = wait_quiet(pool, quiet_wait)
        if waited > 1:
            log(f"  waited {waited:.0f} s for other processes to calm down ({100 * share:.0f}% of a core)")
    started = time.monotonic()
    server: Server | None = None
    try:
        server = Server(kind, options, f"{int(time.time() * 1000)}")
        row.update(variant.run(pool, server))
    except StoreFailed as exc:
        row["error"] = f"skipped: {exc}"
        row["skipped"] = True
    except (ServerFailed, ScenarioFailed, WorkerError, ProbeFailed) as exc:
        row["error"] = str(exc).strip()
        if server is not None and not server.alive:
            row["error"] += f"\n{server.log()}"
    except Exception as exc:  # a bug in the harness must not hide the other servers' results
        row["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        try:
            pool.call("disconnect", scenarios.DISCONNECT_TIMEOUT + 5, within=scenarios.DISCONNECT_TIMEOUT)
        except WorkerError as exc:
            log(f"  client processes did not disconnect ({exc}); restarting them")
            pool.restart()
        finally:
            if server is not None:
                complaint = server.stop()
                if complaint:
                    row.setdefault("note", complaint)
    row["wall_seconds"] = round(time.monotonic() - started, 1)
    return row


def measure(
    pool: WorkerPool,
    name: str,
    kind_name: str,
    options: ServerOptions,
    variant: Variant,
    arguments: argparse.Namespace,
) -> Row:
    """``run_one``, again (up to ``--retries`` times) while other processes disturbed the measurement.

    The row kept is the first undisturbed one, a failed one, or else the least disturbed attempt.
    """
    log(f"- {name} [{variant.label}] {kind_name} ...")
    kept: tuple[float, Row] | None = None
    # A soak judges memory over minutes, not speed: it is not run again for other processes' CPU.
    retries = 0 if name == "soak" else max(0, arguments.retries)
    for attempt in range(1 + retries):
        row = run_one(pool, name, kind_name, options, variant, arguments.quiet_wait)
        busy = disturbance(row)
        log(f"  {summary(name, row)} ({row['wall_seconds']} s)")
        if busy <= DISTURBED_PCT or row.get("error"):
            kept = (busy, row)
            break
        if kept is None or busy < kept[0]:
            kept = (busy, row)
        if attempt < retries:
            log(f"  other processes took up to {busy:.0f}% of a core while measuring: once more")
        elif attempt:
            log(f"  keeping the least disturbed attempt (other processes up to {kept[0]:.0f}% of a core)")
    assert kept is not None
    busy, row = kept
    note_disturbance(row, busy, attempt)
    return row


def median_row(rows: list[Row]) -> Row:
    """One row for the repeated runs of a server and variant: each top-level figure their median.

    Only runs that measured count (a failed one is said in a note, unless all failed: then the
    first failure is the row). Nested figures (``rooms``' steps) are the first such run's; each
    run's row is kept under ``runs``.
    """
    if len(rows) == 1:
        return rows[0]
    measured = [row for row in rows if not row.get("error")]
    if not measured:
        return rows[0]
    row = dict(measured[0])
    for key in measured[0]:
        values = [other.get(key) for other in measured]
        numbers = [float(item) for item in values if isinstance(item, int | float) and not isinstance(item, bool)]
        if len(numbers) < len(values):
            continue  # not a figure (text, a flag, nested figures), or missing from a run
        if all(isinstance(item, int) for item in values):
            row[key] = int(statistics.median_low(numbers))
        else:
            row[key] = statistics.median(numbers)
    notes = [f"run {number}: {other['note']}" for number, other in enumerate(rows, 1) if other.get("note")]
    notes += [f"run {number} failed: {other['error']}" for number, other in enumerate(rows, 1) if other.get("error")]
    row.pop("note", None)
    if notes:
        row["note"] = "; ".join(notes)
    row["runs"] = rows
    return row


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("picows", "websockets", "uvicorn", "starlette", "uvloop", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "chat_commit": chat_commit(),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def pinning(pin: bool) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """With ``--pin``: (the server's CPUs, the clients' and the harness's); the harness pins itself."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    server, clients = frozenset(cpus[:1]), frozenset(cpus[1:])
    os.sched_setaffinity(0, clients)
    return server, clients


def chat_commit() -> str | None:
    """The commit of the chat server measured, with ``+dirty`` when chat/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "chat"], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def raise_file_limit() -> tuple[int, int]:
    """The open-file limit up to the hard one, for the harness and all it starts (clients, servers); the new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: the ``finally`` blocks stop the servers and the clients."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    the_plan = plan(arguments)
    soft, _ = raise_file_limit()
    idle, join = the_plan.idle, the_plan.join
    largest = max(
        [
            *idle.connections,
            *(members * idle.rooms_each for members in idle.members),
            *((members + join.warmup) * join.rooms_each for members in join.members),
            the_plan.rooms.connections,
            *the_plan.fanout.members,
            *([the_plan.storm.members] if "storm" in the_plan.scenarios else []),
            *([the_plan.soak.steady + the_plan.soak.churners] if "soak" in the_plan.scenarios else []),
        ]
    )
    if soft < largest + 200:
        log(f"warning: RLIMIT_NOFILE is {soft}; runs with {largest} connections will fail (raise ulimit -Hn)")
    workdir = arguments.logs or Path(tempfile.mkdtemp(prefix="chat-bench-"))
    server_cpus, client_cpus = pinning(arguments.pin)
    options = ServerOptions(
        deflate=arguments.deflate,
        log_level=arguments.server_log_level,
        chat_args=tuple(part for arg in arguments.chat_arg for part in shlex.split(arg)),
        workdir=workdir,
        cpus=server_cpus,
    )
    document: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "scripts/bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "clients": arguments.clients,
        "repeat": arguments.repeat,
        "client_pace_ms": arguments.client_pace_ms,
        "pinned": {"server": sorted(server_cpus), "clients": sorted(client_cpus or ())} if server_cpus else None,
        "deflate": arguments.deflate,
        "query": the_plan.common.query,
        "endpoints": list(the_plan.endpoints),
        "parameters": {
            "fanout": dataclasses.asdict(the_plan.fanout),
            "rooms": dataclasses.asdict(the_plan.rooms),
            "slow_consumer": dataclasses.asdict(the_plan.slow),
            "idle": dataclasses.asdict(the_plan.idle),
            "join": dataclasses.asdict(the_plan.join),
            "restart": dataclasses.asdict(the_plan.restart),
            "history": dataclasses.asdict(the_plan.history),
            "storm": dataclasses.asdict(the_plan.storm),
            "soak": dataclasses.asdict(the_plan.soak),
        },
        "logs": str(workdir),
        "results": {},
    }
    servers = sorted({kind for kinds in the_plan.servers.values() for kind in kinds}, key=list(KINDS).index)
    log(
        f"chat benchmark: {', '.join(the_plan.scenarios)} on {', '.join(servers)}; "
        f"{arguments.clients} client processes; server logs in {workdir}"
    )
    pool = WorkerPool(arguments.clients, arguments.client_pace_ms / 1000, client_cpus)
    client_capacity = 100.0 * min(arguments.clients, len(client_cpus or os.sched_getaffinity(0)))
    tables: list[str] = []
    try:
        for name in the_plan.scenarios:
            runs = [
                (variant, kind_name)
                for variant in variants(name, the_plan)
                for kind_name in (the_plan.ws_servers[name] if variant.endpoint == WS else the_plan.servers[name])
            ]
            repeated: list[list[Row]] = [[] for _ in runs]
            for round_number in range(arguments.repeat):
                if arguments.repeat > 1:
                    log(f"{name}: round {round_number + 1} of {arguments.repeat}")
                for (variant, kind_name), each in zip(runs, repeated, strict=True):
                    row = measure(pool, name, kind_name, options, variant, arguments)
                    note_client_saturation(row, client_capacity)
                    note_store_cpu(name, row)
                    each.append(row)
            rows = [median_row(each) for each in repeated]
            table = report.TABLES[name](rows)
            tables.append(table)
            document["results"][name] = rows
    finally:
        pool.close()
    header = describe(document, arguments, server_cpus, client_cpus)
    output = header + "\n\n" + "\n\n".join(tables)
    if arguments.json:
        log(output)
        print(json.dumps(document, indent=1, default=str))
    else:
        print(output)
    rows = [row for results in document["results"].values() for row in results]
    return 1 if any(row.get("error") and not row.get("skipped") for row in rows) else 0


def describe(
    document: dict[str, Any],
    arguments: argparse.Namespace,
    server_cpus: frozenset[int] | None,
    client_cpus: frozenset[int] | None,
) -> str:
    """The lines above the tables: when, what, on which machine, with which clients."""
    host = document["machine"]
    pinned = ""
    if server_cpus:
        pinned = f"; server pinned to CPU {sorted(server_cpus)}, clients to {sorted(client_cpus or ())}"
    return (
        f"{document['date']}  {document['command']}\n"
        f"chat at {host['chat_commit']}; machine: {host['cores']} cores ({host['cpu']}), {host['memory_gib']} GiB, "
        f"Linux {host['kernel']}, Python {host['python']}; {arguments.clients} client processes "
        f"(picows {host['versions']['picows']} on uvloop, pace {arguments.client_pace_ms:g} ms); "
        f"deflate {'on' if arguments.deflate else 'off'}{pinned}"
        + (f"\nevery figure is the median of {arguments.repeat} runs, made in turn" if arguments.repeat > 1 else "")
    )


def disturbance(row: Row) -> float:
    """The most CPU (% of a core) that processes other than ours took in any measurement window of the row."""
    windows = [row, *row.get("steps", [])]
    return max(float(window.get("other_cpu_pct") or 0.0) for window in windows)


def note_disturbance(row: Row, busy: float, attempt: int) -> None:
    """Say so on the row when other processes took CPU while it measured."""
    row["attempts"] = attempt + 1
    if busy > DISTURBED_PCT:
        note = f"other processes used up to {busy:.0f}% of a core while measuring: figures disturbed"
        row["note"] = f"{row['note']}; {note}" if row.get("note") else note


STORE_CPU_NOTE = (
    "server CPU includes the PostgreSQL backends serving its database, not PostgreSQL's shared WAL writer, "
    "checkpointer and background writer"
)
MEASURES_CPU = ("fanout", "rooms", "slow_consumer", "idle", "join", "history", "storm", "soak")


def note_store_cpu(name: str, row: Row) -> None:
    """Say what of PostgreSQL's CPU a server's figures count, where they count CPU."""
    kind = KINDS[row["server"]]
    if kind.store == "postgresql" and name in MEASURES_CPU and not row.get("error"):
        row["note"] = f"{row['note']}; {STORE_CPU_NOTE}" if row.get("note") else STORE_CPU_NOTE


def note_client_saturation(row: Row, capacity: float) -> None:
    """Say so when the client processes used nearly all the CPU they could: the figures may be theirs."""
    windows = [row, *(step for step in row.get("steps", []) if step.get("held"))]
    busiest = max(float(window.get("client_cpu_pct") or 0.0) for window in windows)
    if busiest > 0.9 * capacity:
        note = f"the clients used {busiest:.0f}% CPU of at most {capacity:.0f}%: they may be the bottleneck"
        row["note"] = f"{row['note']}; {note}" if row.get("note") else note


def summary(name: str, row: Row) -> str:
    if row.get("error"):
        return ("" if row.get("skipped") else "FAILED: ") + str(row["error"]).splitlines()[0]
    if name == "fanout":
        return (
            f"{report.number(row.get('deliveries_per_s'))} deliveries/s, p50 {report.number(row.get('p50_ms'), 2)} ms, "
            f"p99 {report.number(row.get('p99_ms'), 2)} ms, {report.number(row.get('cpu_ms_per_1k'), 2)} CPU ms/1k, "
            f"lost {row.get('lost')}, server CPU {report.number(row.get('server_cpu_pct'))}%, "
            f"client CPU {report.number(row.get('client_cpu_pct'))}%, "
            f"other {report.number(row.get('other_cpu_pct'))}%"
        )
    if name == "rooms":
        steps = "; ".join(
            f"{step['rate_per_client']:g}/s: p50 {report.number(step['p50_ms'], 1)} "
            f"p99 {report.number(step['p99_ms'], 1)} ms {100 * step['delivered_ratio']:.0f}% "
            f"srv {step['server_cpu_pct']:.0f}% cli {step['client_cpu_pct']:.0f}% "
            f"other {report.number(step['other_cpu_pct'])}%"
            for step in row.get("steps", [])
        )
        return f"held {report.number(row.get('held_rate_per_client'), 1)} msg/s/client; steps: {steps}"
    if name == "slow_consumer":
        return (
            f"published {row.get('published')}, delivered {report.number(row.get('delivered_pct'), 1)}%, "
            f"p99 {report.number(row.get('p99_ms'), 2)} ms, peak {report.number(row.get('peak_rss_mb'), 1)} MB, "
            f"slow closed after {report.number(row.get('slow_closed_s'), 2)} s, stalled {row.get('stalled')}"
        )
    if name == "restart":
        return (
            f"filled {report.number(row.get('messages'))} in {report.number(row.get('fill_seconds'), 1)} s; "
            f"serving after {report.number(row.get('empty_ready_s'), 3)} s empty, "
            f"{report.number(row.get('full_ready_s'), 3)} s full; "
            f"RSS {report.number(row.get('empty_rss_mb'), 1)} / {report.number(row.get('full_rss_mb'), 1)} MB"
        )
    if name == "history":
        return (
            f"{report.number(row.get('pages'))} pages of {row.get('limit')} within the last "
            f"{report.number(row.get('kept'))}: p50 {report.number(row.get('p50_ms'), 2)} ms, "
            f"p99 {report.number(row.get('p99_ms'), 2)} ms, {report.number(row.get('cpu_ms_per_page'), 2)} CPU ms/page"
        )
    if name == "storm":
        return (
            f"every member welcomed after {report.number(row.get('welcomed_s'), 2)} s "
            f"({report.number(row.get('welcomed'))} of {report.number(row.get('members'))}; "
            f"half after {report.number(row.get('welcome_p50_s'), 2)} s), "
            f"server CPU {report.number(row.get('server_cpu_s'), 2)} s, "
            f"p50 {report.number(row.get('p50_ms'), 1)} ms, p99 {report.number(row.get('p99_ms'), 1)} ms, "
            f"lost {row.get('lost')}, duplicates {row.get('duplicates')}, "
            f"{report.number(row.get('frames_per_member'), 1)} frames/member, "
            f"client CPU {report.number(row.get('client_cpu_pct'))}%, "
            f"other {report.number(row.get('other_cpu_pct'))}%"
        )
    if name == "soak":
        verdicts = ", ".join(
            f"{target} {'met' if verdict['met'] else 'MISSED'}" for target, verdict in row.get("targets", {}).items()
        )
        return (
            f"{report.number(row.get('cycles'))} cycles, {report.number(row.get('acked'))} acked, "
            f"missed {row.get('missed')}, doubled {row.get('doubled')}, out of order {row.get('out_of_order')}; "
            f"RSS {report.number(row.get('rss_start_mib'), 1)} -> peak {report.number(row.get('rss_peak_mib'), 1)} "
            f"-> end {report.number(row.get('rss_end_mib'), 1)} MiB; "
            f"fds {row.get('fds_start')} -> {row.get('fds_end')}; "
            f"tracebacks {row.get('tracebacks')}; {verdicts}"
        )
    if name == "join":
        return (
            f"mean {report.number(row.get('mean_ms'), 2)} ms, "
            f"p50 {report.number(row.get('p50_ms'), 2)} ms, p99 {report.number(row.get('p99_ms'), 2)} ms, "
            f"{report.number(row.get('cpu_ms_per_member'), 2)} CPU ms/member, "
            f"server CPU {report.number(row.get('server_cpu_pct'))}%, "
            f"client CPU {report.number(row.get('client_cpu_pct'))}%, "
            f"other {report.number(row.get('other_cpu_pct'))}%"
        )
    return (
        f"{report.number(row.get('kib_per_connection'), 1)} KiB/conn, "
        f"{report.number(row.get('bytes_per_member_room'))} B/member-room, "
        f"{report.number(row.get('handshakes_per_s'))} handshakes/s, open {row.get('open')}, "
        f"server CPU {report.number(row.get('server_cpu_pct'))}%, "
        f"client CPU {report.number(row.get('client_cpu_pct'))}%, "
        f"other {report.number(row.get('other_cpu_pct'))}%"
    )
