"""Smoke test of the benchmark (``scripts/bench``): every scenario on every server with tiny parameters.

It checks that the benchmark still runs and measures, not how fast anything is: every server starts,
every scenario connects its clients, delivers, and reports figures, and nothing is lost where
nothing should be. ``scripts/bench`` prepares the virtualenv's ``bench`` extra (picows) itself.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
SCENARIOS = ("fanout", "rooms", "slow_consumer", "idle")
SERVERS = ("chat", "chat-delay", "chat-redis", "seed", "raw")
RUN_TIMEOUT = 180.0
"""A quick run takes about 30 s; a stuck one must fail, not hang."""

pytestmark = pytest.mark.e2e

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


def rows_of(document: Document, scenario: str) -> dict[str, Row]:
    rows: list[Row] = document["results"][scenario]
    return {row["server"]: row for row in rows}


def measured(document: Document, scenario: str) -> dict[str, Row]:
    """The rows of a scenario that ran (chat-redis is skipped on a machine without redis-server)."""
    rows = rows_of(document, scenario)
    assert set(rows) == set(SERVERS), rows.keys()
    if shutil.which("redis-server") is None:
        assert rows["chat-redis"].get("skipped"), rows["chat-redis"]
        del rows["chat-redis"]
    for server, row in rows.items():
        assert not row.get("error"), f"{scenario} on {server}: {row['error']}"
    return rows


def test_the_run_describes_itself(quick: Document) -> None:
    assert quick["machine"]["cores"] >= 1
    assert quick["machine"]["versions"]["picows"]
    assert set(quick["results"]) == set(SCENARIOS)


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


def test_rooms_ramps_the_rate(quick: Document) -> None:
    for server, row in measured(quick, "rooms").items():
        assert row["steps"], server
        # Whether a rate is held depends on the machine (and on what else runs on it): only the ramp is checked.
        assert row["held_rate_per_client"] or row["failed_rate_per_client"], (server, row["steps"])
        first = row["steps"][0]
        assert first["deliveries"] > 0, (server, first)
        assert first["delivered_ratio"] > 0.5, (server, first)
        assert first["p99_ms"] is not None, (server, first)


def test_slow_consumer_reports_what_reached_the_others(quick: Document) -> None:
    for server, row in measured(quick, "slow_consumer").items():
        assert row["published"] > 0, (server, row)
        assert row["delivered"] > 0, (server, row)
        assert row["peak_rss_mb"] > 0, (server, row)
        assert row["p99_ms"] is not None, (server, row)


def test_idle_counts_memory_and_handshakes(quick: Document) -> None:
    for server, row in measured(quick, "idle").items():
        assert row["open"] == row["connections"], (server, row)
        assert row["handshakes_per_s"] > 0, (server, row)
        assert row["rss_mb"] > 0, (server, row)


def test_clients_negotiate_deflate() -> None:
    document = bench("--quick", "--scenario", "fanout", "--servers", "chat,raw", "--deflate")
    assert document["deflate"] is True
    for server, row in rows_of(document, "fanout").items():
        assert not row.get("error"), f"{server}: {row['error']}"
        assert row["lost"] == 0, (server, row)
        assert row["errors"] == 0, (server, row)


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


def client_module() -> Any:
    """``benchmark.client`` (importable once ``scripts/bench`` installed picows, which the runs above do)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    importlib.invalidate_caches()
    pytest.importorskip("picows", reason="the bench extra is not installed (scripts/bench installs it)")
    return importlib.import_module("benchmark.client")


def test_client_counts_newline_delimited_compressed_and_fragmented_frames(quick: Document) -> None:
    client = client_module()
    latency = importlib.import_module("benchmark.latency")
    picows = importlib.import_module("picows.picows")
    text, continuation = picows.WSMsgType.TEXT, picows.WSMsgType.CONTINUATION
    loop = asyncio.new_event_loop()
    try:
        worker = StubWorker(loop, latency.SIZE)
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
    finally:
        loop.close()
