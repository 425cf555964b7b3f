"""The benchmark (``scripts/bench``): a smoke run of every scenario on its servers, and its pure pieces.

The smoke run checks that the benchmark still runs and measures, not how fast anything is: every
server starts, every scenario connects its clients, delivers, and reports figures, and nothing is
lost where nothing should be. ``scripts/bench`` prepares the virtualenv's ``bench`` extra (picows)
itself. The pure pieces (options, the store fill, the tables) are tested without servers.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
SCENARIOS = ("fanout", "rooms", "slow_consumer", "idle", "join", "restart", "history")
EVERY_KIND = ("chat", "chat-delay", "chat-redis", "seed", "raw")
SERVERS = {
    "fanout": ("chat", "chat-sqlite", "chat-delay", "chat-redis", "chat-redis-pg", "seed", "raw"),
    "rooms": ("chat", "chat-sqlite", "chat-delay", "chat-redis", "seed", "raw"),
    "slow_consumer": EVERY_KIND,
    "idle": EVERY_KIND,
    "join": ("chat", "chat-redis"),
    "restart": ("chat-sqlite", "chat-redis-pg"),
    "history": ("chat", "chat-sqlite", "chat-redis-pg"),
}
WS_SERVERS = {"fanout": ("chat", "chat-redis"), "idle": ("chat", "chat-redis"), "join": ("chat", "chat-redis")}
"""The servers that run the /ws variants of a scenario by default."""
RUN_TIMEOUT = 240.0
"""A quick run takes about 45 s; a stuck one must fail, not hang."""

if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

Document = dict[str, Any]
Row = dict[str, Any]


def bench(*arguments: str) -> Document:
    """Run ``scripts/bench --json`` and return its JSON (asserting it exited 0)."""
    command = [str(BENCH), "--json", "--quiet-wait", "0", "--retries", "0", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    assert completed.returncode == 0, f"{' '.join(command)} exited {completed.returncode}:\n{completed.stderr[-6000:]}"
    document: Document = json.loads(completed.stdout)
    return document


@pytest.fixture(scope="module")
def quick() -> Document:
    """One quick run of every scenario on every server."""
    return bench("--quick")


def rows_of(document: Document, scenario: str, endpoint: str = "v1", variant: str | None = None) -> dict[str, Row]:
    """The rows of a scenario on one endpoint (and of one variant, when given), by server."""
    rows: list[Row] = document["results"][scenario]
    return {
        row["server"]: row
        for row in rows
        if row.get("endpoint", "v1") == endpoint and (variant is None or row["variant"] == variant)
    }


def measured(document: Document, scenario: str, endpoint: str = "v1", variant: str | None = None) -> dict[str, Row]:
    """The rows of a scenario that ran: redis kinds are skipped without redis-server, chat-redis-pg without
    PostgreSQL (never under CI, which makes sure both are there)."""
    rows = rows_of(document, scenario, endpoint, variant)
    assert set(rows) == set((WS_SERVERS if endpoint == "ws" else SERVERS)[scenario]), rows.keys()
    allowed = [] if os.environ.get("CI") else ["PostgreSQL is not reachable"]
    if shutil.which("redis-server") is None:
        allowed.append("no redis-server on PATH")
    for server, row in list(rows.items()):
        if row.get("skipped"):
            assert any(reason in row["error"] for reason in allowed), (server, row["error"])
            del rows[server]
    for server, row in rows.items():
        assert not row.get("error"), f"{scenario} on {server}: {row['error']}"
    return rows


@pytest.mark.e2e
def test_the_run_describes_itself(quick: Document) -> None:
    assert quick["machine"]["cores"] >= 1
    assert quick["machine"]["versions"]["picows"]
    assert set(quick["results"]) == set(SCENARIOS)


@pytest.mark.e2e
def test_fanout_delivers_everything_and_measures(quick: Document) -> None:
    for server, row in measured(quick, "fanout").items():
        assert row["deliveries_per_s"] > 0, server
        assert row["published"] > 0, (server, row)
        assert row["lost"] == 0, (server, row)
        assert row["p50_ms"] is not None, (server, row)
        assert row["p99_ms"] >= row["p50_ms"], (server, row)
        assert row["cpu_ms_per_1k"] > 0, (server, row)
        assert row["client_cpu_pct"] > 0, (server, row)
        assert row["errors"] == 0, (server, row["error_samples"])
    ratios = rows_of(quick, "fanout")["chat"]["ratio"]["deliveries_per_s"]
    assert ratios["seed"] > 0
    assert ratios["raw"] > 0
    if "chat-sqlite" in measured(quick, "fanout"):
        assert rows_of(quick, "fanout")["chat-sqlite"]["ratio"]["deliveries_per_s"]["no store"] > 0


@pytest.mark.e2e
def test_fanout_over_ws_delivers_everything_and_is_divided_by_v1(quick: Document) -> None:
    """Members on /ws join the room with a join frame; the publisher's acks come back; nothing is lost."""
    for server, row in measured(quick, "fanout", "ws").items():
        assert row["variant"] == "20 members, /ws", (server, row)
        assert row["v1_variant"] == "20 members", (server, row)
        assert row["published"] > 0, (server, row)
        assert row["lost"] == 0, (server, row)
        assert row["errors"] == 0, (server, row["error_samples"])
        assert row["ratio"]["deliveries_per_s"]["v1"] > 0, (server, row["ratio"])
        assert row["ratio"]["cpu_ms_per_1k"]["v1"] > 0, (server, row["ratio"])


@pytest.mark.e2e
def test_rooms_ramps_the_rate(quick: Document) -> None:
    for server, row in measured(quick, "rooms").items():
        assert row["steps"], server
        # Whether a rate is held depends on the machine (and on what else runs on it): only the ramp is checked.
        assert row["held_rate_per_client"] or row["failed_rate_per_client"], (server, row["steps"])
        first = row["steps"][0]
        assert first["deliveries"] > 0, (server, first)
        assert first["delivered_ratio"] > 0.5, (server, first)
        assert first["p99_ms"] is not None, (server, first)


@pytest.mark.e2e
def test_slow_consumer_reports_what_reached_the_others(quick: Document) -> None:
    for server, row in measured(quick, "slow_consumer").items():
        assert row["published"] > 0, (server, row)
        assert row["delivered"] > 0, (server, row)
        assert row["peak_rss_mb"] > 0, (server, row)
        assert row["p99_ms"] is not None, (server, row)


@pytest.mark.e2e
def test_idle_counts_memory_and_handshakes(quick: Document) -> None:
    for server, row in measured(quick, "idle", variant="60 conns").items():
        assert row["open"] == row["connections"] == row["member_rooms"] == 60, (server, row)
        assert row["handshakes_per_s"] > 0, (server, row)
        assert row["rss_mb"] > 0, (server, row)


@pytest.mark.e2e
def test_idle_members_in_ten_rooms_on_both_endpoints(quick: Document) -> None:
    """10 members in 10 rooms each: 100 connections on v1, 10 on /ws; memory per member-room both ways."""
    v1 = measured(quick, "idle", variant="10 members x 10 rooms")
    for server, row in v1.items():
        assert (row["open"], row["connections"], row["member_rooms"]) == (100, 100, 100), (server, row)
        assert row["bytes_per_member_room"] is not None, (server, row)
    for server, row in measured(quick, "idle", "ws").items():
        assert (row["open"], row["connections"], row["member_rooms"]) == (10, 10, 100), (server, row)
        assert row["errors"] == 0, (server, row["error_samples"])
        assert row["member_rooms_per_s"] > 0, (server, row)
        assert "v1" in row["ratio"]["bytes_per_member_room"], (server, row["ratio"])


@pytest.mark.e2e
def test_join_times_every_member_on_both_endpoints(quick: Document) -> None:
    """10 members (after 2 not counted) join 10 rooms each: 10 connections each on v1, one each on /ws."""
    for endpoint, connections in (("v1", 10), ("ws", 1)):
        for server, row in measured(quick, "join", endpoint).items():
            assert row["open"] == 12 * connections, (server, endpoint, row)
            assert row["p99_ms"] >= row["p50_ms"] > 0, (server, endpoint, row)
            assert row["mean_ms"] > 0, (server, endpoint, row)
            assert row["errors"] == 0, (server, endpoint, row["error_samples"])
    for server, row in rows_of(quick, "join", "ws").items():
        if not row.get("error"):
            assert row["ratio"]["mean_ms"]["v1"] > 0, (server, row["ratio"])


@pytest.mark.e2e
def test_restart_fills_the_store_and_times_both_starts(quick: Document) -> None:
    """A store kind is filled, then serves the filled rooms at their seqs after a restart."""
    for server, row in measured(quick, "restart").items():
        assert row["messages"] == 2000, (server, row)
        assert row["fill_per_s"] > 0, (server, row)
        assert 0 < row["empty_ready_s"] < row["wall_seconds"], (server, row)
        assert 0 < row["full_ready_s"] < row["wall_seconds"], (server, row)
        assert row["empty_rss_mb"] > 0, (server, row)
        assert row["full_rss_mb"] > 0, (server, row)


@pytest.mark.e2e
def test_history_pages_at_random_depths(quick: Document) -> None:
    """Every page is full and ends where it was asked to; memory:// pages within what it keeps."""
    rows = measured(quick, "history")
    for server, row in rows.items():
        assert row["pages"] == 100, (server, row)
        assert row["p99_ms"] >= row["p50_ms"] > 0, (server, row)
    assert rows["chat"]["kept"] == 1000, rows["chat"]  # memory:// keeps history_size; the stores keep everything
    for server in set(rows) - {"chat"}:
        assert rows[server]["kept"] == rows[server]["messages"] == 2000, rows[server]


STORM_SERVERS = ("chat", "chat-redis2", "seed")
STORM_KINDS = ("welcome", "join", "leave", "message", "ack", "other")


@pytest.fixture(scope="module")
def storm() -> Document:
    """A quick storm (20 members in rooms of 5, a restart and a cut) on chat, chat on two workers, and the seed."""
    return bench("--quick", "--scenario", "storm", "--servers", ",".join(STORM_SERVERS))


def storm_rows(document: Document) -> dict[tuple[str, str], Row]:
    """The storm's rows that ran, by (server, drop); a redis kind is skipped only without redis-server."""
    rows: dict[tuple[str, str], Row] = {}
    for row in document["results"]["storm"]:
        if row.get("skipped"):
            assert shutil.which("redis-server") is None, row["error"]
            continue
        assert not row.get("error"), f"storm on {row['server']} ({row['variant']}): {row['error']}"
        rows[(row["server"], row["drop"])] = row
    return rows


@pytest.mark.e2e
def test_storm_brings_every_member_back_and_counts_what_the_server_sent(storm: Document) -> None:
    """After a restart and after a cut, all 20 members are welcomed again; frames, bytes and latency are counted."""
    variants = [row["variant"] for row in storm["results"]["storm"]]
    assert variants == [f"20 members, rooms of 5, {drop}" for drop in ("restart", "cut") for _ in STORM_SERVERS]
    rows = storm_rows(storm)
    assert {server for server, _ in rows} >= {"chat", "seed"}
    for (server, drop), row in rows.items():
        assert (row["members"], row["rooms"], row["room_size"]) == (20, 4, 5), (server, drop, row)
        assert row["all_welcomed"], (server, drop, row["welcomed"], row["failed_attempts"])
        assert 0 < row["welcome_p50_s"] <= row["welcomed_s"] < row["limit_s"], (server, drop, row)
        assert row["storm_messages"] > 0, (server, drop, row)
        assert row["p99_ms"] >= row["p50_ms"] > 0, (server, drop, row)
        assert row["frames_per_member"] > 0, (server, drop, row)
        assert row["bytes_per_member"] > 0, (server, drop, row)
        assert set(row["per_member"]) == set(STORM_KINDS), (server, drop, row["per_member"])
        assert row["per_member"]["welcome"] >= 1, (server, drop, row["per_member"])
        assert row["attempts_per_member"] >= 1, (server, drop, row)
        assert row["server_cpu_s"] > 0, (server, drop, row)
        assert row["errors"] == 0, (server, drop, row["error_samples"])
        if drop == "restart":
            assert 0 < row["server_exited_s"] < row["server_listening_s"], (server, drop, row)
        else:
            assert row["close_codes"] == {"cut": 20}, (server, drop, row["close_codes"])
            assert row["server_listening_s"] is None, (server, drop, row)


@pytest.mark.e2e
def test_storm_on_chat_loses_nothing_and_the_seed_says_what_it_lost(storm: Document) -> None:
    """chat: every acknowledged message of the room's last epoch reaches every member once, in order, after a
    restart (1012, then recovered: false on memory://) and after a cut (recovered: true); the seed's losses are
    counted, not asserted."""
    rows = storm_rows(storm)
    for (server, drop), row in rows.items():
        assert row["expected"] > 0, (server, drop, row)
        if server == "seed":
            assert row["lost"] == row["expected"] - row["received"], (server, drop, row)
            assert row["recovered"] == {"absent": 20}, (server, drop, row["recovered"])
            continue
        assert (row["lost"], row["duplicates"], row["out_of_order"]) == (0, 0, 0), (server, drop, row["loss_samples"])
        assert row["received"] == row["expected"], (server, drop, row)
        assert row["per_member"]["join"] > 0, (server, drop, row["per_member"])
        if drop == "restart":
            assert row["close_codes"].get("1012", 0) > 0, (server, drop, row["close_codes"])
        # memory:// starts every room anew after a restart; Redis keeps them, and a cut keeps them everywhere
        recovered = "false" if (server, drop) == ("chat", "restart") else "true"
        assert row["recovered"] == {recovered: 20}, (server, drop, row["recovered"])


SOAK_SERVERS = ("chat", "chat-redis")


@pytest.fixture(scope="module")
def soak() -> Document:
    """A quick soak (8 s: 10 churners, 6 steady members in 3 rooms, every way to leave) on chat and chat-redis."""
    return bench("--quick", "--scenario", "soak", "--servers", ",".join(SOAK_SERVERS))


def soak_rows(document: Document) -> dict[str, Row]:
    """The soak's rows that ran, by server; chat-redis is skipped only without redis-server."""
    rows: dict[str, Row] = {}
    for row in document["results"]["soak"]:
        if row.get("skipped"):
            assert shutil.which("redis-server") is None, row["error"]
            continue
        assert not row.get("error"), f"soak on {row['server']}: {row['error']}"
        rows[row["server"]] = row
    assert "chat" in rows
    return rows


@pytest.mark.e2e
def test_soak_cycles_connections_and_counts_them(soak: Document) -> None:
    """Churners connect, get their messages acknowledged and leave in each of the three ways, again and again."""
    for server, row in soak_rows(soak).items():
        assert (row["churners"], row["steady"], row["rooms"], row["duration_s"]) == (10, 6, 3, 8.0), (server, row)
        assert row["cycles"] > 10, (server, row)
        assert set(row["leaves"]) == {"clean", "reset", "stall"}, (server, row["leaves"])
        assert row["acked_in_churn"] > 0, (server, row)
        assert row["acked"] == row["acked_in_churn"] + 3 * 100, (server, row)
        assert row["failures"] == {}, (server, row["failures"])
        assert row["errors"] == 0, (server, row["error_samples"])


@pytest.mark.e2e
def test_soak_steady_members_get_every_acknowledged_message_once_in_order(soak: Document) -> None:
    """Each steady member gets every acknowledged message of its room (the fill's too), once, in seq order."""
    for server, row in soak_rows(soak).items():
        assert row["expected"] == 2 * row["acked"], (server, row)  # two steady members per room
        assert (row["missed"], row["doubled"], row["out_of_order"]) == (0, 0, 0), (server, row["miss_samples"])
        assert (row["steady_lost"], row["seq_clashes"]) == (0, 0), (server, row)
        assert row["targets"]["delivery"]["met"], (server, row["targets"])


@pytest.mark.e2e
def test_soak_reads_memory_and_fds_over_time_and_the_log(soak: Document) -> None:
    """RSS is sampled every second of the churn, the fds come back to where they were, the log has no traceback."""
    for server, row in soak_rows(soak).items():
        assert len(row["rss_samples"]) >= 8, (server, row["rss_samples"])
        assert 0 < row["rss_joined_mib"] <= row["rss_peak_mib"], (server, row)
        assert row["rss_end_mib"] > 0, (server, row)
        assert row["rss_slope_last_half_mib_per_min"] is not None, (server, row)
        assert row["fds_start"] > row["steady"], (server, row)
        assert row["targets"]["fds"]["met"], (server, row["targets"]["fds"])
        assert row["tracebacks"] == 0, (server, row["traceback_samples"])
        assert set(row["targets"]) == {"rss", "flat", "fds", "delivery", "tracebacks"}, (server, row["targets"])
        if server == "chat-redis":
            assert row["redis_rss_end_mib"] > 0, row


@pytest.mark.e2e
def test_clients_negotiate_deflate() -> None:
    document = bench("--quick", "--scenario", "fanout", "--servers", "chat,raw", "--deflate")
    assert document["deflate"] is True
    for server, row in rows_of(document, "fanout").items():
        assert not row.get("error"), f"{server}: {row['error']}"
        assert row["lost"] == 0, (server, row)
        assert row["errors"] == 0, (server, row)


@pytest.mark.e2e
def test_a_server_that_fails_to_start_is_reported_not_waited_for() -> None:
    started = time.monotonic()
    document = bench_failing("--quick", "--scenario", "idle", "--servers", "chat", "--chat-arg=--history-size=-1")
    row = document["results"]["idle"][0]
    assert row["error"], row
    assert time.monotonic() - started < 60


def bench_failing(*arguments: str) -> Document:
    """Like ``bench``, for a run that must exit 1 because a server failed."""
    command = [str(BENCH), "--json", "--quiet-wait", "0", "--retries", "0", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    assert completed.returncode == 1, completed.stderr[-4000:]
    document: Document = json.loads(completed.stdout)
    return document


# --- the client's frame counting, without a server --------------------------------------------


class StubWorker:
    """Just what a ``Client`` touches of its worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.hist = [0] * size
        self.errors: list[str] = []
        self.leaves = 0
        self.disconnected = 0

    def record(self, elapsed: int) -> None:
        self.hist[0] += 1

    def note_leave(self) -> None:
        self.leaves += 1

    def note_error(self, sample: str) -> None:
        self.errors.append(sample)


@pytest.fixture
def worker() -> Iterator[StubWorker]:
    """A stand-in worker on an event loop of its own, closed when the test ends."""
    client_module()  # puts scripts/ on the path (and skips without the bench extra)
    latency = importlib.import_module("benchmark.latency")
    loop = asyncio.new_event_loop()
    try:
        yield StubWorker(loop, latency.SIZE)
    finally:
        loop.close()


def client_module() -> Any:
    """``benchmark.client`` (importable once ``scripts/bench`` installed picows, which the runs above do)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    importlib.invalidate_caches()
    pytest.importorskip("picows", reason="the bench extra is not installed (scripts/bench installs it)")
    return importlib.import_module("benchmark.client")


@pytest.mark.e2e
def test_client_counts_newline_delimited_compressed_and_fragmented_frames(quick: Document, worker: StubWorker) -> None:
    client = client_module()
    picows = importlib.import_module("picows.picows")
    text, continuation = picows.WSMsgType.TEXT, picows.WSMsgType.CONTINUATION
    member = client.Client(worker)
    one = client.message_frame(100, None).replace(b'{"type":"message",', b'{"type":"message","seq":1,', 1)
    join = b'{"type":"join","room":"r","member":{"id":"x","name":"y"}}'
    member.payload(one)
    member.payload(b"\n".join([one, join, one, b'{"type":"ack","ref":1,"seq":2}']))
    stamp = one.split(b'"text":"')[1].split(b'"')[0]
    member.payload(b'{"type": "message", "seq": 2, "text": "' + stamp + b'"}')  # not compact: the slow path
    member.payload(b'{"type":"leave","room":"r","member":{"id":"x","name":"y"}}')
    assert (member.received, member.acks, worker.leaves, worker.errors) == (4, 1, 1, [])
    assert sum(worker.hist) == 4

    deflate = zlib.compressobj(wbits=-15)
    compressed = deflate.compress(one) + deflate.flush(zlib.Z_SYNC_FLUSH)
    member.inflater = zlib.decompressobj(-15)
    frame = picows._make_test_ws_frame(text, compressed[: -len(client.DEFLATE_TAIL)], True, True)
    member.on_ws_frame(None, frame)
    assert member.received == 5
    member.on_ws_frame(None, picows._make_test_ws_frame(text, one[:40], False, False))
    member.on_ws_frame(None, picows._make_test_ws_frame(continuation, one[40:], True, False))
    assert member.received == 6
    assert worker.errors == []


class Sent:
    """A stand-in transport that keeps what a ``Client`` sends."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, kind: object, data: bytes) -> None:
        self.frames.append(data)


def test_a_ws_member_is_ready_at_its_hello_and_joined_at_its_last_welcome(worker: StubWorker) -> None:
    """On /ws: the hello makes the member ready; join sends one join frame per room, done after as many welcomes."""
    client = client_module()
    member = client.Client(worker, client.WS)
    member.transport = sent = Sent()
    member.payload(b'{"type":"hello","you":{"id":"u1","name":"a"}}')
    assert member.ready.done()
    joined = member.join(["r1", "r2"])
    assert [json.loads(frame) for frame in sent.frames] == [
        {"type": "join", "room": "r1", "ref": 1},
        {"type": "join", "room": "r2", "ref": 2},
    ]
    welcome = b'{"type":"welcome","room":"r1","you":{"id":"u1","name":"a"},"members":[],"seq":0,"ref":1}'
    member.payload(welcome)
    assert not joined.done()
    member.payload(welcome.replace(b'"r1"', b'"r2"').replace(b'"ref":1', b'"ref":2'))
    assert joined.done()
    assert joined.exception() is None
    assert member.join([]).done()
    refused = member.join(["r1"])
    member.payload(b'{"type":"error","code":"bad_request","detail":"already joined","room":"r1","ref":1}')
    assert isinstance(refused.exception(), ConnectionError)
    assert "already joined" in str(refused.exception())
    assert len(worker.errors) == 1


def test_a_v1_member_is_ready_at_its_welcome_and_a_ws_member_names_its_room(worker: StubWorker) -> None:
    """A hello means nothing on v1; a /ws member's messages name its room, a v1 member's do not."""
    client = client_module()
    member = client.Client(worker)
    member.payload(b'{"type":"hello","you":{"id":"u1","name":"a"}}')
    assert not member.ready.done()
    member.payload(b'{"type":"welcome","room":"r","you":{"id":"u1","name":"a"},"members":[],"seq":0}')
    assert member.ready.done()
    member.transport = sent = Sent()
    member.send_message(30, True)
    member.room = "r9"
    member.send_message(30, True)
    plain, named = (json.loads(frame) for frame in sent.frames)
    assert plain.keys() == {"type", "text", "ref"}
    assert (named["room"], named["ref"], len(named["text"])) == ("r9", 2, 30)
    assert named["text"][: client.STAMP_DIGITS].isdigit()


def test_a_close_fails_what_a_ws_member_waits_for(worker: StubWorker) -> None:
    """A connection closed before its hello, or before every welcome, fails the wait instead of hanging it."""
    client = client_module()
    member = client.Client(worker, client.WS)
    member.transport = Sent()
    joining = member.join(["r1"])
    member.on_ws_disconnected(None)
    assert "before the hello" in str(member.ready.exception())
    assert "before every welcome" in str(joining.exception())
    assert worker.disconnected == 1


def test_paths_of_both_endpoints() -> None:
    client = client_module()
    assert client.path("v1", "r1", "a", "&batch=1") == "/ws/r1?name=a&batch=1"
    assert client.path("ws", "r1,r2", "a", "") == "/ws?name=a"
    assert client.rooms_of("r1,r2") == ["r1", "r2"]
    assert client.rooms_of("") == []
    with pytest.raises(ValueError, match="unknown endpoint"):
        client.path("v2", "r1", "a", "")


# --- pure pieces: options, the store fill, the tables ------------------------------------------


def cli_module() -> Any:
    """``benchmark.cli`` (it imports the client processes' module, hence picows)."""
    pytest.importorskip("picows", reason="the bench extra is not installed (scripts/bench installs it)")
    return importlib.import_module("benchmark.cli")


def test_each_scenario_has_its_default_servers() -> None:
    """Without --servers, the stores join fanout (SQLite rooms too); restart and history run where they make sense."""
    cli = cli_module()
    plan = cli.plan(cli.parser().parse_args([]))
    assert plan.scenarios == list(SCENARIOS)
    assert {name: tuple(kinds) for name, kinds in plan.servers.items()} == SERVERS


def test_named_servers_run_every_scenario_chosen() -> None:
    """--servers replaces every scenario's default list."""
    cli = cli_module()
    plan = cli.plan(cli.parser().parse_args(["--scenario", "fanout,restart", "--servers", "chat,chat-sqlite"]))
    assert plan.servers == {"fanout": ["chat", "chat-sqlite"], "restart": ["chat", "chat-sqlite"]}


def test_store_sizes_reach_restart_and_history() -> None:
    """--stored sizes both stores, --rooms the restart's rooms, --pages the history requests."""
    cli = cli_module()
    plan = cli.plan(cli.parser().parse_args(["--stored", "5000", "--rooms", "7", "--pages", "30"]))
    assert (plan.restart.messages, plan.restart.rooms) == (5000, 7)
    assert (plan.history.messages, plan.history.pages, plan.history.limit) == (5000, 30, 50)
    assert plan.idle.rooms == 7
    quick = cli.plan(cli.parser().parse_args(["--quick"]))
    assert quick.restart.messages == quick.history.messages == 2000


def test_history_refuses_fewer_messages_than_a_page() -> None:
    """A history store smaller than one page cannot be paged deep."""
    cli = cli_module()
    with pytest.raises(SystemExit):
        cli.plan(cli.parser().parse_args(["--scenario", "history", "--stored", "10"]))


def test_only_kinds_with_a_store_restart_and_references_keep_no_history() -> None:
    """restart skips servers without a durable store; history skips the references."""
    cli = cli_module()
    kinds = importlib.import_module("benchmark.servers").KINDS
    assert cli.unsupported("restart", kinds["chat"]) == "no durable store"
    assert cli.unsupported("history", kinds["raw"]) == "no history"
    assert cli.unsupported("history", kinds["chat"]) is None


def test_chat_kinds_name_their_store() -> None:
    """chat and chat-delay name memory:// (the baseline whatever the default); the store kinds get their URL."""
    servers = importlib.import_module("benchmark.servers")
    options = servers.ServerOptions()
    chat = servers.ArgvBuilder(servers.KINDS["chat"], options, None)(8000)
    assert chat[chat.index("--store") + 1] == "memory://"
    delay = servers.ArgvBuilder(servers.KINDS["chat-delay"], options, None)(8000)
    assert delay[delay.index("--store") + 1] == "memory://"
    url = "postgresql://postgres@127.0.0.1:5432/chat_bench_x"
    pg = servers.ArgvBuilder(servers.KINDS["chat-redis-pg"], options, "redis://127.0.0.1:1/0", url)(8000)
    assert pg[pg.index("--store") + 1] == url
    assert pg[pg.index("--backend") + 1] == "redis://127.0.0.1:1/0"


def test_store_urls() -> None:
    """An absolute SQLite path keeps its slash; a database's URL is the admin URL's server."""
    stores = importlib.import_module("benchmark.stores")
    assert stores.sqlite_url(Path("/tmp/x/chat.db")) == "sqlite:////tmp/x/chat.db"
    assert stores.database_url("db1") == "postgresql://postgres@127.0.0.1:5432/db1"


def test_postgres_backends_are_found_by_their_title() -> None:
    """A backend's process title names its database before its client address; other processes do not match."""
    stores = importlib.import_module("benchmark.stores")
    assert stores.is_backend_of("postgres: 15/main: postgres chat_bench_1 127.0.0.1(50312) idle", "chat_bench_1")
    assert stores.is_backend_of("postgres: postgres chat_bench_1 127.0.0.1(50312) INSERT", "chat_bench_1")
    assert not stores.is_backend_of("postgres: postgres chat_bench_2 127.0.0.1(50312) idle", "chat_bench_1")
    assert not stores.is_backend_of("postgres: 15/main: checkpointer", "chat_bench_1")
    assert not stores.is_backend_of("python -m chat --store chat_bench_1 (x)", "chat_bench_1")


def test_a_scratch_sqlite_store_is_removed(tmp_path: Path) -> None:
    """A fresh SQLite store lives in a directory of its own, gone after ``remove``."""
    stores = importlib.import_module("benchmark.stores")
    store = stores.ScratchStore("sqlite", tmp_path)
    assert store.url.startswith(f"sqlite:///{tmp_path}/")
    assert store.directory.is_dir()
    assert store.cpu_seconds() == 0.0
    store.remove()
    assert not store.directory.exists()


def test_messages_spread_room_after_room() -> None:
    """Rooms get as even a share as the numbers allow; batches keep rooms in order and cut at the size."""
    fill = importlib.import_module("benchmark.fill")
    assert fill.room_counts(10, 3) == [4, 3, 3]
    assert fill.room_counts(2, 3) == [1, 1, 0]
    batches = list(fill.batches([3, 2], 4))
    assert batches == [["stored0"] * 3 + ["stored1"], ["stored1"]]
    assert len(fill.text(7)) == fill.TEXT_SIZE


def test_fill_records_every_message_in_its_room(tmp_path: Path) -> None:
    """A small fill through the SQLite store class: each room ends at the seq its count says."""
    pytest.importorskip("chat.stores.sqlite", reason="this chat has no SQLite store")
    fill = importlib.import_module("benchmark.fill")
    from chat.settings import Settings
    from chat.stores import open_store

    url = f"sqlite:///{tmp_path}/chat.db"
    filled = fill.fill(url, 250, 3, batch=40)
    assert (filled.messages, filled.counts, filled.rooms) == (250, [84, 83, 83], ["stored0", "stored1", "stored2"])

    async def seqs() -> list[int]:
        store = open_store(url, Settings(store=url))
        await store.start(lambda message, epoch: None)
        try:
            return [(await store.snapshot(room, None, None, 1)).seq for room in filled.rooms]
        finally:
            await store.stop()

    assert asyncio.run(seqs()) == [84, 83, 83]


def test_percentiles_and_history_size() -> None:
    """Nearest-rank percentiles; the history a server keeps follows its --history-size."""
    stored = importlib.import_module("benchmark.stored")
    assert stored.percentile([], 0.5) is None
    assert stored.percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert stored.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert stored.history_size(["python", "-m", "chat"]) == 1000
    assert stored.history_size(["--history-size", "300"]) == 300
    assert stored.history_size(["--history-size=200"]) == 200


def test_store_tables_and_skipped_rows() -> None:
    """The restart and history tables show their figures; a skipped row says so, apart from failures."""
    report = importlib.import_module("benchmark.report")
    restart = {
        "server": "chat-sqlite",
        "variant": "v",
        "messages": 1000,
        "rooms": 10,
        "fill_seconds": 0.5,
        "fill_per_s": 2000.0,
        "store_mb": 0.3,
        "empty_ready_s": 0.812,
        "full_ready_s": 0.845,
        "empty_rss_mb": 40.0,
        "full_rss_mb": 40.5,
        "rss_growth_mb": 0.5,
    }
    skipped = {"server": "chat-redis-pg", "variant": "v", "error": "skipped: no PostgreSQL", "skipped": True}
    text = report.TABLES["restart"]([restart, skipped])
    assert "0.812" in text
    assert "0.845" in text
    assert "40.5" in text
    assert "skipped:\n  chat-redis-pg (v): skipped: no PostgreSQL" in text
    assert "FAILED" not in text
    assert "failures:" not in text
    history = {"server": "chat-sqlite", "variant": "v", "messages": 10**6, "kept": 10**6, "pages": 2000}
    history.update(limit=50, depth_max=999950, p50_ms=0.61, p99_ms=1.93, max_ms=4.2, cpu_ms_per_page=0.4)
    assert "1,000,000" in report.TABLES["history"]([history])
    assert "1.93" in report.TABLES["history"]([history])


def test_a_store_kind_is_compared_with_the_same_server_without_it() -> None:
    """chat-sqlite's fanout figures are divided by chat's in the ``/no store`` column."""
    report = importlib.import_module("benchmark.report")
    rows: list[Row] = [
        {"server": "chat", "variant": "200", "deliveries_per_s": 200000.0, "cpu_ms_per_1k": 3.0},
        {"server": "chat-sqlite", "variant": "200", "deliveries_per_s": 180000.0, "cpu_ms_per_1k": 3.3},
    ]
    text = report.TABLES["fanout"](rows)
    assert rows[1]["ratio"]["deliveries_per_s"]["no store"] == pytest.approx(0.9)
    assert rows[1]["ratio"]["cpu_ms_per_1k"]["no store"] == pytest.approx(1.1)
    assert "/no store" in text
    assert "0.90" in text
    assert "no store" not in rows[0]["ratio"]["deliveries_per_s"]


def test_fanout_idle_and_join_run_each_size_on_v1_then_ws() -> None:
    """Each size's /ws variant follows its v1 one and names it; by default /ws runs on chat and chat-redis only."""
    cli = cli_module()
    plan = cli.plan(cli.parser().parse_args(["--scenario", "fanout,idle,join"]))
    assert plan.ws_servers == {name: list(WS_SERVERS[name]) for name in ("fanout", "idle", "join")}
    fanout = [(v.label, v.endpoint, v.pair) for v in cli.variants("fanout", plan)]
    assert fanout == [
        ("200 members", "v1", None),
        ("200 members, /ws", "ws", "200 members"),
        ("1000 members", "v1", None),
        ("1000 members, /ws", "ws", "1000 members"),
    ]
    idle = [(v.label, v.endpoint, v.pair) for v in cli.variants("idle", plan)]
    assert idle == [
        ("5000 conns", "v1", None),
        ("15000 conns", "v1", None),
        ("1000 members x 10 rooms", "v1", None),
        ("1000 members x 10 rooms, /ws", "ws", "1000 members x 10 rooms"),
    ]
    join = [(v.label, v.endpoint, v.pair) for v in cli.variants("join", plan)]
    assert join == [
        ("500 members x 10 rooms", "v1", None),
        ("500 members x 10 rooms, /ws", "ws", "500 members x 10 rooms"),
    ]


def test_endpoints_members_and_rooms_each_options() -> None:
    """--endpoints keeps one side; --members sizes idle's members and join too; --rooms-each their rooms."""
    cli = cli_module()
    arguments = ["--scenario", "idle,join", "--members", "200", "--rooms-each", "4", "--servers", "chat,raw"]
    plan = cli.plan(cli.parser().parse_args(arguments))
    assert (plan.idle.connections, plan.idle.members, plan.idle.rooms_each) == ([200], [200], 4)
    assert (plan.join.members, plan.join.rooms_each) == ([200], 4)
    assert plan.ws_servers == {"idle": ["chat", "raw"], "join": ["chat", "raw"]}
    only_ws = cli.plan(cli.parser().parse_args([*arguments, "--endpoints", "ws"]))
    assert [(v.label, v.pair) for v in cli.variants("idle", only_ws)] == [("200 members x 4 rooms, /ws", None)]
    only_v1 = cli.plan(cli.parser().parse_args([*arguments, "--endpoints", "v1"]))
    assert {v.endpoint for v in cli.variants("join", only_v1)} == {"v1"}
    with pytest.raises(SystemExit):
        cli.plan(cli.parser().parse_args(["--endpoints", "v2"]))


def test_the_references_do_not_speak_ws() -> None:
    cli = cli_module()
    kinds = importlib.import_module("benchmark.servers").KINDS
    assert cli.unsupported("fanout", kinds["seed"], "ws") == "does not speak /ws (protocol v1.1)"
    assert cli.unsupported("join", kinds["raw"], "ws") == "does not speak /ws (protocol v1.1)"
    assert cli.unsupported("join", kinds["raw"], "v1") is None
    assert cli.unsupported("idle", kinds["chat"], "ws") is None


def test_members_of_idle_and_join() -> None:
    """idle: a member's rooms differ (v1: a connection per room); join: blocks of room_size share their rooms."""
    scenarios = importlib.import_module("benchmark.scenarios")
    params = scenarios.IdleParams(rooms=12, rooms_each=10)
    ws = scenarios.idle_members(params, 3, 10, "ws")
    assert [name for _, name, _ in ws] == ["i0", "i1", "i2"]
    assert all(len(set(rooms.split(","))) == 10 for rooms, _, _ in ws)
    assert ws[1][0].split(",")[:3] == ["idle10", "idle11", "idle0"]
    v1 = scenarios.idle_members(params, 3, 10, "v1")
    assert len(v1) == 30
    assert [room for room, name, _ in v1 if name == "i1"] == ws[1][0].split(",")
    few = scenarios.idle_members(scenarios.IdleParams(rooms=3), 1, 10, "ws")
    assert len(set(few[0][0].split(","))) == 10
    join = scenarios.join_members(scenarios.JoinParams(rooms_each=3, room_size=2), 3, "j")
    assert join == [
        ("j0-0,j0-1,j0-2", "j0", "member"),
        ("j0-0,j0-1,j0-2", "j1", "member"),
        ("j1-0,j1-1,j1-2", "j2", "member"),
    ]


def test_ws_rows_are_divided_by_the_same_servers_v1_row() -> None:
    """The /v1 columns: a /ws row's figure over the same server's v1 row of the same size; v1 rows have none."""
    report = importlib.import_module("benchmark.report")
    v1: Row = {"server": "chat", "variant": "200", "endpoint": "v1", "deliveries_per_s": 100000.0, "cpu_ms_per_1k": 4.0}
    ws: Row = {"server": "chat", "variant": "200, /ws", "endpoint": "ws", "v1_variant": "200"}
    ws.update(deliveries_per_s=96000.0, cpu_ms_per_1k=4.2)
    other: Row = {"server": "chat-redis", "variant": "200", "endpoint": "v1", "deliveries_per_s": 1.0}
    text = report.TABLES["fanout"]([v1, ws, other])
    assert ws["ratio"]["deliveries_per_s"]["v1"] == pytest.approx(0.96)
    assert ws["ratio"]["cpu_ms_per_1k"]["v1"] == pytest.approx(1.05)
    assert "v1" not in v1["ratio"]["deliveries_per_s"]
    assert "/v1" in text
    assert "0.96" in text
    assert "/ws/{room}" in text

    idle_v1: Row = {"server": "chat", "variant": "m", "endpoint": "v1", "members": 10, "rooms_each": 10}
    idle_v1.update(bytes_per_member_room=20000.0, cpu_ms_per_member_room=0.5)
    idle_ws: Row = {"server": "chat", "variant": "m, /ws", "endpoint": "ws", "v1_variant": "m", "members": 10}
    idle_ws.update(rooms_each=10, bytes_per_member_room=3000.0, cpu_ms_per_member_room=0.1)
    text = report.TABLES["idle"]([idle_v1, idle_ws])
    assert idle_ws["ratio"]["bytes_per_member_room"]["v1"] == pytest.approx(0.15)
    assert "0.15" in text
    assert "10 x 10" in text

    join_v1: Row = {"server": "chat", "variant": "j", "endpoint": "v1", "members": 10, "rooms_each": 10}
    join_v1.update(mean_ms=8.0, p50_ms=7.5, p99_ms=12.0, max_ms=13.0, cpu_ms_per_member=4.0)
    join_ws: Row = {"server": "chat", "variant": "j, /ws", "endpoint": "ws", "v1_variant": "j", "members": 10}
    join_ws.update(rooms_each=10, mean_ms=2.0, p50_ms=1.5, p99_ms=4.0, max_ms=5.0, cpu_ms_per_member=1.0)
    text = report.TABLES["join"]([join_v1, join_ws])
    assert join_ws["ratio"]["mean_ms"]["v1"] == pytest.approx(0.25)
    assert "4.00x" in text
    skipped: Row = {"server": "raw", "variant": "j, /ws", "endpoint": "ws", "v1_variant": "j", "skipped": True}
    skipped["error"] = "skipped: does not speak /ws (protocol v1.1)"
    assert "skipped:\n  raw (j, /ws): skipped: does not speak /ws" in report.TABLES["join"]([join_v1, skipped])
    lone = report.TABLES["join"]([join_v1])
    assert "/v1" not in lone


def test_storm_options_and_default_servers() -> None:
    """storm runs only when named (or with all); --room-size, --drops, --publish-interval and --duration reach it."""
    cli = cli_module()
    assert "storm" not in cli.plan(cli.parser().parse_args([])).scenarios
    everything = cli.plan(cli.parser().parse_args(["--scenario", "all"]))
    assert everything.scenarios == [*SCENARIOS, "storm", "soak"]
    assert everything.servers["storm"] == ["chat", "chat-redis2", "seed", "raw"]
    plan = cli.plan(cli.parser().parse_args(["--scenario", "storm"]))
    assert (plan.storm.members, plan.storm.room_sizes, plan.storm.drops) == (10000, [150], ["restart", "cut"])
    assert [variant.label for variant in cli.variants("storm", plan)] == [
        "10,000 members, rooms of 150, restart",
        "10,000 members, rooms of 150, cut",
    ]
    arguments = ["--scenario", "storm,rooms", "--members", "300", "--room-size", "30,10", "--drops", "cut"]
    plan = cli.plan(cli.parser().parse_args([*arguments, "--publish-interval", "0.5", "--duration", "9"]))
    assert (plan.storm.members, plan.storm.room_sizes, plan.storm.drops) == (300, [30, 10], ["cut"])
    assert (plan.storm.interval, plan.storm.limit, plan.rooms.room_size) == (0.5, 9.0, 30)
    assert len(cli.variants("storm", plan)) == 2
    with pytest.raises(SystemExit):
        cli.plan(cli.parser().parse_args(["--scenario", "storm", "--drops", "crash"]))
    with pytest.raises(SystemExit):
        cli.plan(cli.parser().parse_args(["--scenario", "storm", "--members", "10", "--room-size", "1"]))


def test_soak_options_and_default_servers() -> None:
    """soak runs only when named; --duration, --churners, --steady, --rooms, --leave-mix, --batch, --fill reach it."""
    cli = cli_module()
    plan = cli.plan(cli.parser().parse_args(["--scenario", "soak"]))
    assert plan.servers["soak"] == ["chat", "chat-redis"]
    params = plan.soak
    assert (params.duration, params.churners, params.steady, params.rooms, params.fill) == (420.0, 60, 40, 20, 1000)
    assert (params.mix, params.batch) == ({"clean": 1.0, "reset": 1.0, "stall": 1.0}, False)
    arguments = ["--scenario", "soak", "--duration", "60", "--churners", "8", "--steady", "4", "--rooms", "2"]
    plan = cli.plan(cli.parser().parse_args([*arguments, "--leave-mix", "clean=2,stall", "--batch", "--fill", "0"]))
    params = plan.soak
    assert (params.duration, params.churners, params.steady, params.rooms, params.fill) == (60.0, 8, 4, 2, 0)
    assert (params.mix, params.batch) == ({"clean": 2.0, "stall": 1.0}, True)
    assert [variant.label for variant in cli.variants("soak", plan)] == [
        "8 churners, 4 steady in 2 rooms, 60 s, clean=2,stall=1, batch=1"
    ]
    for mix in ("clean,crash", "clean=0", "reset=-1"):
        with pytest.raises(SystemExit):
            cli.plan(cli.parser().parse_args(["--scenario", "soak", "--leave-mix", mix]))
    assert cli.unsupported("soak", cli.KINDS["seed"]) == "no acks to check the steady members against"
    assert cli.unsupported("soak", cli.KINDS["chat"]) is None


def test_soak_checks_each_steady_member_against_the_acks() -> None:
    """Missed, doubled and out-of-order messages are counted against the acknowledged seqs of the member's room;
    a message nobody saw acknowledged is extra, not an error."""
    soak = importlib.import_module("benchmark.soak")
    accepted = [("a", 1, 101), ("a", 2, 102), ("a", 3, 103), ("b", 1, 201)]
    fine = soak.check(accepted, [("a", "s0", [101, 102, 103]), ("b", "s1", [201])])
    assert (fine["expected"], fine["missed"], fine["doubled"], fine["out_of_order"], fine["extra"]) == (4, 0, 0, 0, 0)
    bad = soak.check(accepted, [("a", "s0", [101, 103, 103, 999]), ("a", "s2", [102, 101, 103]), ("b", "s1", [])])
    assert (bad["missed"], bad["doubled"], bad["out_of_order"], bad["extra"]) == (2, 1, 1, 1)
    assert bad["members_missing"] == 2
    assert bad["miss_samples"][0] == "s0 in a: 1 of 3 missing, the first seq 2"
    assert soak.check([("a", 1, 101), ("a", 1, 102)], [])["seq_clashes"] == 1
    assert soak.held_messages(accepted, keep=2) == 3


def test_soak_slope_traceback_count_and_targets() -> None:
    """A linear fit in MiB per minute; tracebacks counted with their exception line; each target met or not."""
    soak = importlib.import_module("benchmark.soak")
    assert soak.slope_per_minute([(0.0, 50.0), (30.0, 51.0), (60.0, 52.0)]) == pytest.approx(2.0)
    assert soak.slope_per_minute([(0.0, 50.0)]) is None
    log = "INFO ok\nTraceback (most recent call last):\n  File x\nValueError: bad\nTraceback (x):\nKeyError: 1\n"
    assert soak.tracebacks(log) == (2, ["ValueError: bad", "KeyError: 1"])
    row: Row = {"rss_joined_mib": 40.0, "history_mib": 9.0, "rss_start_mib": 49.0, "rss_end_mib": 65.0}
    row.update(rss_slope_last_half_mib_per_min=0.1, fds_start=54, fds_end=56, tracebacks=0, steady_lost=0)
    row.update(expected=100, missed=0, doubled=0, out_of_order=0)
    verdicts = soak.targets(row)
    assert {name: verdict["met"] for name, verdict in verdicts.items()} == {
        "rss": False,
        "flat": True,
        "fds": True,
        "delivery": True,
        "tracebacks": True,
    }
    assert verdicts["rss"]["detail"] == "RSS end 65.0 MiB <= 40.0 + history 9.0 + 15 = 64.0 MiB"
    assert soak.parse_mix("reset") == {"reset": 1.0}


def test_soak_client_tags_and_leaves() -> None:
    """A message's text starts with its 20-digit tag; leaves are drawn with the mix's weights."""
    client = importlib.import_module("benchmark.soak_client")
    frame = client.message_frame(10**15 + 7, 30, 3)
    assert frame == b'{"type":"message","text":"00001000000000000007xxxxxxxxxx","ref":3}'
    served = b'{"type":"message","room":"r","seq":4,"from":{"id":"a","name":"b"},"text":"00001000000000000007xx"}'
    assert client.tag_of(served) == 10**15 + 7
    assert client.tag_of(b'{"type":"message","text":"hello"}') is None
    rand = random.Random(1)
    assert {client.pick_leave({"clean": 1.0, "reset": 0.0, "stall": 1.0}, rand) for _ in range(50)} == {
        "clean",
        "stall",
    }


def test_soak_table() -> None:
    """One row per server, then each target's verdict and the RSS over time."""
    report = importlib.import_module("benchmark.report")
    soak = importlib.import_module("benchmark.soak")
    row: Row = {"server": "chat", "variant": "v", "rss_joined_mib": 40.0, "history_mib": 9.0, "rss_start_mib": 49.0}
    row.update(rss_end_mib=65.0, rss_peak_mib=70.0, rss_slope_last_half_mib_per_min=0.1, fds_start=54, fds_end=56)
    row.update(tracebacks=0, steady_lost=0, expected=100, missed=0, doubled=0, out_of_order=0, cycles=1234, acked=99)
    row.update(rss_samples=[[float(at), 49.0 + at / 10, 54] for at in range(0, 200, 5)])
    row["targets"] = soak.targets(row)
    text = report.TABLES["soak"]([row])
    assert "missed: rss" in text
    assert "FAIL  rss: RSS end 65.0 MiB" in text
    assert "pass  tracebacks: 0 tracebacks in the server log" in text
    assert "RSS over time (s MiB): 0 s 49.0, 20 s 51.0," in text
    assert text.rstrip().endswith("195 s 68.5")


def test_storm_members_rooms_and_what_each_room_must_deliver() -> None:
    """Member i is in room i mod rooms, the first of each room publishes; the check covers the room's last epoch
    (chat), or what the reference echoed since it last started."""
    storm = importlib.import_module("benchmark.storm")
    assert storm.storm_rooms(10000, 150) == 67
    assert storm.binned([0.1, 0.4, 0.6, 1.7], 0.5) == [2, 1, 0, 1]
    assert storm.binned([], 0.5) == []
    members = storm.storm_members(7, 3)
    assert members[:3] == [("storm0", "s0", True), ("storm1", "s1", True), ("storm0", "s2", False)]
    assert sum(1 for _, _, publisher in members if publisher) == 2
    publisher = {"room": "storm0", "epoch": "new", "accepted": [("old", 5), ("new", 7), ("new", 9)]}
    reports = [{"publishers": [publisher]}]
    assert storm.accepted_window(reports, True, "restart", 6) == {"storm0": [7, 9]}
    echoed = {"room": "storm0", "epoch": None, "accepted": [(None, 5), (None, 7)]}
    assert storm.accepted_window([{"publishers": [echoed]}], False, "restart", 6) == {"storm0": [7]}
    assert storm.accepted_window([{"publishers": [echoed]}], False, "cut", 6) == {"storm0": [5, 7]}


def test_storm_members_come_back_as_the_web_client_does() -> None:
    """0.15-0.75 s after a drop (2-4 s after a 1013), then the web client's backoff; 0.3-0.6 s at most when the
    server answered; since/epoch in the address once a welcome gave an epoch."""
    client = importlib.import_module("benchmark.storm_client")

    def delays(attempt: int, code: int | None, soon: bool) -> tuple[float, float]:
        return (
            client.retry_delay(attempt, code, soon, lambda: 0.0),
            client.retry_delay(attempt, code, soon, lambda: 1.0),
        )

    assert delays(0, 1012, False) == (0.15, 0.75)
    assert delays(0, None, False) == (0.15, 0.75)
    assert delays(0, 1013, False) == (2.0, 4.0)
    assert delays(1, None, False) == (0.5, 1.0)
    assert delays(3, None, False) == (2.0, 4.0)
    assert delays(10, None, False) == (7.5, 15.0)
    assert delays(3, None, True) == (0.3, 0.6)
    assert delays(2, 1013, False) == (2.0, 4.0)
    assert client.storm_path("r", "a", 0, None, "") == "/ws/r?name=a"
    assert client.storm_path("r", "a", 12, "E1", "&batch=1") == "/ws/r?name=a&since=12&epoch=E1&batch=1"
    assert client.classify(ConnectionRefusedError(), None) == ("refused", None, False)
    assert client.classify(TimeoutError(), None) == ("timeout", None, False)
    assert client.classify(ConnectionError("closed"), 1013) == ("closed 1013", 1013, False)
    assert client.classify(ConnectionResetError(), None) == ("reset", None, False)
    assert client.wire_size(125) == 127
    assert client.wire_size(126) == 130
    assert client.wire_size(70000) == 70010


def test_storm_table() -> None:
    """One row per server and drop: the time to the last welcome divided by the references', loss as a share."""
    report = importlib.import_module("benchmark.report")
    base: Row = {"variant": "v", "rooms": 67, "room_size": 150, "drop": "restart", "members": 10000, "limit_s": 20.0}
    chat: Row = {**base, "server": "chat", "welcomed_s": 6.0, "welcomed": 10000, "server_cpu_s": 8.0, "lost": 0}
    chat.update(expected=500, duplicates=0, per_member={"join": 75.0, "leave": 0.0}, bytes_per_member=20480)
    seed: Row = {**base, "server": "seed", "welcomed_s": 3.0, "welcomed": 10000, "server_cpu_s": 2.0, "lost": 50}
    seed.update(expected=500)
    late: Row = {**base, "server": "chat-redis2", "welcomed_s": None, "welcomed": 6400, "lost": 10}
    text = report.TABLES["storm"]([chat, seed, late])
    assert chat["ratio"]["welcomed_s"]["seed"] == pytest.approx(2.0)
    assert chat["ratio"]["server_cpu_s"]["seed"] == pytest.approx(4.0)
    assert "67 x 150" in text
    assert "50 (10.0%)" in text
    assert "> 20 (64%)" in text
    assert "20.0" in text  # KiB per member


def test_retries_keep_the_least_disturbed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt disturbed: the one with the least CPU taken by others is kept, and says so."""
    cli = cli_module()
    attempts = iter([40.0, 20.0, 60.0])

    def run_one(*arguments: Any) -> Row:
        return {"server": "chat", "variant": "v", "other_cpu_pct": next(attempts), "wall_seconds": 1.0}

    monkeypatch.setattr(cli, "run_one", run_one)
    arguments = cli.parser().parse_args(["--retries", "2"])
    variant = cli.Variant("v", lambda pool, server: {})
    row = cli.measure(None, "fanout", "chat", None, variant, arguments)
    assert (row["other_cpu_pct"], row["attempts"]) == (20.0, 3)
    assert "20% of a core" in row["note"]
    attempts = iter([40.0, 5.0, 60.0])
    row = cli.measure(None, "fanout", "chat", None, variant, arguments)
    assert (row["other_cpu_pct"], row["attempts"]) == (5.0, 2)
    assert "note" not in row


def test_repeated_runs_report_the_median_of_each_figure() -> None:
    """--repeat: each top-level figure is the median of the runs that measured; text and nested figures are
    the first such run's; a failed run is said in the note, and every run is kept."""
    cli = cli_module()
    assert cli.parser().parse_args(["--repeat", "3"]).repeat == 3
    rows: list[Row] = [
        {"server": "chat", "variant": "v", "lost": 0, "deliveries_per_s": 90.0, "stalled": False, "steps": [1]},
        {"server": "chat", "variant": "v", "lost": 4, "deliveries_per_s": 120.0, "stalled": True, "note": "busy"},
        {"server": "chat", "variant": "v", "error": "server exited"},
        {"server": "chat", "variant": "v", "lost": 1, "deliveries_per_s": 100.0, "stalled": False, "steps": [3]},
    ]
    row = cli.median_row(rows)
    assert (row["lost"], row["deliveries_per_s"], row["stalled"], row["steps"]) == (1, 100.0, False, [1])
    assert row["note"] == "run 2: busy; run 3 failed: server exited"
    assert row["runs"] == rows
    assert "error" not in row
    assert cli.median_row(rows[2:3]) is rows[2]
    assert cli.median_row([rows[2], rows[2]])["error"] == "server exited"
