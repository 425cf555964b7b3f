"""The tables: one per scenario, each server on a row, with its ratios to the two reference servers.

A server with a durable store is also compared with the same server without it (``/no store``:
``chat-sqlite`` with ``chat``, ``chat-redis-pg`` with ``chat-redis``). A run of members on ``/ws``
is compared with the same server's run of the same size on v1 (``/v1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from benchmark.servers import KINDS

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]
REFERENCES = ("seed", "raw")
BASELINE = "no store"
"""The ratio key of a server with a durable store to the same server without it."""
V1 = "v1"
"""The ratio key of a ``/ws`` row to the same server's v1 row of the same size (its ``v1_variant``)."""
ENDPOINTS = {"v1": "/ws/{room}", "ws": "/ws"}


def number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and digits == 0:
        return f"{value:,}"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def render(title: str, columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """A plain-text table; a failed (or skipped) row shows its error after the first two columns."""
    header = [name for name, _ in columns]
    body: list[list[str]] = []
    failures: list[str] = []
    skipped: list[str] = []
    for row in rows:
        if row.get("error"):
            status = "skipped" if row.get("skipped") else "FAILED"
            cells = [cell(row) for _, cell in columns[:2]] + [status] + [""] * (len(columns) - 3)
            (skipped if row.get("skipped") else failures).append(
                f"  {row['server']} ({row.get('variant', '')}): {row['error']}"
            )
        else:
            cells = [cell(row) for _, cell in columns]
        body.append(cells)
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]
    lines = [title, "  ".join(name.rjust(width) for name, width in zip(header, widths, strict=True))]
    lines += ["  ".join(text.rjust(width) for text, width in zip(cells, widths, strict=True)) for cells in body]
    notes = [f"  {row['server']} ({row.get('variant', '')}): {row['note']}" for row in rows if row.get("note")]
    if notes:
        lines += ["notes:", *notes]
    if skipped:
        lines += ["skipped:", *skipped]
    if failures:
        lines += ["failures:", *failures]
    return "\n".join(lines)


def add_ratios(rows: list[Row], metrics: Sequence[str]) -> None:
    """``row["ratio"][metric][ref]`` = row's metric / the reference's, within the same variant."""
    for row in rows:
        references = {reference: same_variant(rows, reference, row) for reference in REFERENCES}
        kind = KINDS.get(str(row["server"]))
        if kind is not None and kind.baseline is not None:
            references[BASELINE] = same_variant(rows, kind.baseline, row)
        if row.get("v1_variant"):
            references[V1] = next(
                (r for r in rows if r["server"] == row["server"] and r.get("variant") == row["v1_variant"]), None
            )
        row["ratio"] = {
            metric: {
                reference: quotient(row.get(metric), other.get(metric) if other and not other.get("error") else None)
                for reference, other in references.items()
            }
            for metric in metrics
        }


def same_variant(rows: list[Row], server: str, row: Row) -> Row | None:
    """The row of ``server`` for the same variant as ``row``, if it ran."""
    return next((r for r in rows if r["server"] == server and r.get("variant") == row.get("variant")), None)


def quotient(mine: Any, theirs: Any) -> float | None:
    """``mine / theirs`` when both are numbers and ``theirs`` is not 0; else None."""
    if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
        return mine / theirs
    return None


def ratio(metric: str, reference: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        value = row.get("ratio", {}).get(metric, {}).get(reference)
        return "-" if value is None else f"{value:.2f}"

    return cell


def ratios(metric: str, baseline: bool = False, v1: bool = False) -> list[Column]:
    """The ratio columns of one metric: ``/seed``, ``/raw`` (``/no store`` with ``baseline``, ``/v1`` with ``v1``)."""
    names = (*REFERENCES, *([BASELINE] if baseline else []), *([V1] if v1 else []))
    return [(f"/{reference}", ratio(metric, reference)) for reference in names]


def paired(rows: Sequence[Row]) -> bool:
    """Whether a row is compared with a v1 row (then the table has ``/v1`` columns)."""
    return any(row.get("v1_variant") for row in rows)


def endpoint_column() -> Column:
    return ("endpoint", lambda row: ENDPOINTS.get(str(row.get("endpoint", "v1")), str(row.get("endpoint"))))


def field(key: str, digits: int = 0) -> Callable[[Row], str]:
    return lambda row: number(row.get(key), digits)


def server_column() -> Column:
    return ("server", lambda row: str(row["server"]))


def fanout_table(rows: list[Row]) -> str:
    add_ratios(rows, ["deliveries_per_s", "cpu_ms_per_1k", "p99_ms"])
    v1 = paired(rows)
    columns: list[Column] = [
        server_column(),
        *([endpoint_column()] if v1 else []),
        ("members", field("members")),
        ("deliveries/s", field("deliveries_per_s")),
        *ratios("deliveries_per_s", baseline=True, v1=v1),
        ("p50 ms", field("p50_ms", 2)),
        ("p99 ms", field("p99_ms", 2)),
        ("CPU ms/1k deliv", field("cpu_ms_per_1k", 2)),
        *ratios("cpu_ms_per_1k", baseline=True, v1=v1),
        ("lost", field("lost")),
        ("server CPU%", field("server_cpu_pct")),
        ("client CPU%", field("client_cpu_pct")),
        ("other CPU%", field("other_cpu_pct")),
    ]
    return render("fanout: one room, one publisher (<= window unacknowledged), every member receives", columns, rows)


def rooms_table(rows: list[Row]) -> str:
    add_ratios(rows, ["held_rate_per_client", "held_cpu_ms_per_1k"])

    def failed_at(row: Row) -> str:
        if row.get("failed_rate_per_client") is None:
            return "-"
        ratio_text = number(100 * (row.get("failed_delivered_ratio") or 0.0))
        return f"{number(row['failed_rate_per_client'], 1)} (p99 {number(row.get('failed_p99_ms'), 1)}, {ratio_text}%)"

    columns: list[Column] = [
        server_column(),
        ("conns", field("connections")),
        ("held msg/s/client", field("held_rate_per_client", 1)),
        *ratios("held_rate_per_client", baseline=True),
        ("publish/s", field("held_publish_per_s")),
        ("deliveries/s", field("held_deliveries_per_s")),
        ("p99 ms", field("held_p99_ms", 1)),
        ("CPU ms/1k deliv", field("held_cpu_ms_per_1k", 2)),
        *ratios("held_cpu_ms_per_1k", baseline=True),
        ("next rate failed (p99 ms, delivered)", failed_at),
        ("client CPU%", field("held_client_cpu_pct")),
    ]
    return render("rooms: every client publishes open loop; highest rate held with p99 under the limit", columns, rows)


def slow_table(rows: list[Row]) -> str:
    def closed(row: Row) -> str:
        value = row.get("slow_closed_s")
        return "never" if value is None else f"{value:.2f} s"

    columns: list[Column] = [
        server_column(),
        ("members", field("members")),
        ("published", field("published")),
        ("in s", field("publish_seconds", 1)),
        ("delivered to others", lambda row: f"{number(row.get('delivered'))} ({number(row.get('delivered_pct'), 1)}%)"),
        ("complete", field("members_complete")),
        ("p50 ms", field("p50_ms", 2)),
        ("p99 ms", field("p99_ms", 2)),
        ("peak RSS MB", field("peak_rss_mb", 1)),
        ("+MB", lambda row: number((row.get("peak_rss_mb") or 0) - (row.get("baseline_rss_mb") or 0), 1)),
        ("slow one closed after", closed),
        ("stalled", field("stalled")),
    ]
    return render("slow_consumer: one member stops reading; what reaches the others", columns, rows)


def idle_table(rows: list[Row]) -> str:
    add_ratios(rows, ["kib_per_connection", "bytes_per_member_room", "handshakes_per_s", "cpu_ms_per_member_room"])
    v1 = paired(rows)
    columns: list[Column] = [
        server_column(),
        *([endpoint_column()] if v1 else []),
        ("members x rooms", lambda row: f"{number(row.get('members'))} x {number(row.get('rooms_each'))}"),
        ("conns", field("connections")),
        ("KiB/conn", field("kib_per_connection", 1)),
        *ratios("kib_per_connection"),
        ("B/member-room", field("bytes_per_member_room")),
        *([("/v1", ratio("bytes_per_member_room", V1))] if v1 else []),
        ("handshakes/s", field("handshakes_per_s")),
        *ratios("handshakes_per_s"),
        ("member-rooms/s", field("member_rooms_per_s")),
        ("CPU ms/member-room", field("cpu_ms_per_member_room", 3)),
        *([("/v1", ratio("cpu_ms_per_member_room", V1))] if v1 else []),
        ("RSS MB", field("rss_mb", 1)),
        ("server CPU%", field("server_cpu_pct")),
        ("client CPU%", field("client_cpu_pct")),
    ]
    title = "idle: members that only connect and join; memory per connection and per member-room (a member in a room)"
    return render(title, columns, rows)


def join_table(rows: list[Row]) -> str:
    add_ratios(rows, ["mean_ms", "p50_ms", "p99_ms", "cpu_ms_per_member"])
    v1 = paired(rows)

    def to_v1(metric: str) -> list[Column]:
        return [("/v1", ratio(metric, V1))] if v1 else []

    def faster(row: Row) -> str:
        value = row.get("ratio", {}).get("mean_ms", {}).get(V1)
        return f"{1 / value:.2f}x" if value else "-"

    columns: list[Column] = [
        server_column(),
        endpoint_column(),
        ("members x rooms", lambda row: f"{number(row.get('members'))} x {number(row.get('rooms_each'))}"),
        ("mean ms", field("mean_ms", 2)),
        *to_v1("mean_ms"),
        ("p50 ms", field("p50_ms", 2)),
        *to_v1("p50_ms"),
        ("p99 ms", field("p99_ms", 2)),
        *to_v1("p99_ms"),
        ("max ms", field("max_ms", 2)),
        ("CPU ms/member", field("cpu_ms_per_member", 2)),
        *to_v1("cpu_ms_per_member"),
        *([("faster (v1 mean / mean)", faster)] if v1 else []),
        ("server CPU%", field("server_cpu_pct")),
        ("client CPU%", field("client_cpu_pct")),
    ]
    title = (
        "join: members one at a time join their rooms until the last welcome: on v1 a connection per room "
        "(handshakes included), on /ws a join frame per room on the open connection"
    )
    return render(title, columns, rows)


def restart_table(rows: list[Row]) -> str:
    columns: list[Column] = [
        server_column(),
        ("stored", field("messages")),
        ("rooms", field("rooms")),
        ("filled in s", field("fill_seconds", 1)),
        ("fill msg/s", field("fill_per_s")),
        ("store MB", field("store_mb", 1)),
        ("serving after s: empty", field("empty_ready_s", 3)),
        ("full", field("full_ready_s", 3)),
        ("RSS MB: empty", field("empty_rss_mb", 1)),
        ("full", field("full_rss_mb", 1)),
        ("+MB", field("rss_growth_mb", 1)),
    ]
    title = "restart: from the server process's start to a join's welcome at its room's seq, empty and full store"
    return render(title, columns, rows)


def history_table(rows: list[Row]) -> str:
    columns: list[Column] = [
        server_column(),
        ("stored", field("messages")),
        ("kept", field("kept")),
        ("pages", field("pages")),
        ("of", field("limit")),
        ("deepest", field("depth_max")),
        ("p50 ms", field("p50_ms", 2)),
        ("p99 ms", field("p99_ms", 2)),
        ("max ms", field("max_ms", 2)),
        ("CPU ms/page", field("cpu_ms_per_page", 2)),
    ]
    title = "history: one member pages back from random seqs of one room (round trip of each history request)"
    return render(title, columns, rows)


def storm_table(rows: list[Row]) -> str:
    add_ratios(rows, ["welcomed_s", "server_cpu_s"])

    def per_member(kind: str) -> Callable[[Row], str]:
        return lambda row: number((row.get("per_member") or {}).get(kind), 1)

    def welcomed(row: Row) -> str:
        if row.get("welcomed_s") is not None:
            return number(row["welcomed_s"], 2)
        share = 100 * (row.get("welcomed") or 0) / max(1, row.get("members") or 1)
        return f"> {number(row.get('limit_s'))} ({share:.0f}%)"

    def lost(row: Row) -> str:
        if row.get("lost") is None:
            return "-"
        expected = row.get("expected") or 0
        share = f" ({100 * row['lost'] / expected:.1f}%)" if row["lost"] and expected else ""
        return f"{number(row['lost'])}{share}"

    columns: list[Column] = [
        server_column(),
        ("rooms", lambda row: f"{number(row.get('rooms'))} x {number(row.get('room_size'))}"),
        ("drop", lambda row: str(row.get("drop", ""))),
        ("all welcomed s", welcomed),
        *ratios("welcomed_s"),
        ("half s", field("welcome_p50_s", 2)),
        ("back up s", field("server_listening_s", 2)),
        ("accept queue", field("accept_queue_peak")),
        ("server CPU s", field("server_cpu_s", 2)),
        *ratios("server_cpu_s"),
        ("p50 ms", field("p50_ms", 1)),
        ("p99 ms", field("p99_ms", 1)),
        ("storm msgs", field("storm_messages")),
        ("lost", lost),
        ("dup", field("duplicates")),
        ("frames/member", field("frames_per_member", 1)),
        ("KiB/member", lambda row: number((row.get("bytes_per_member") or 0) / 1024, 1)),
        ("joins", per_member("join")),
        ("leaves", per_member("leave")),
        ("attempts/member", field("attempts_per_member", 2)),
        ("client CPU%", field("client_cpu_pct")),
    ]
    title = (
        "storm: every member drops at once (server restart, or the clients' network cut) and reconnects with "
        "since/epoch; from the drop until every member has its welcome again (frames, KiB, joins, leaves: "
        "what the server sent per member from the drop to the end of the run)"
    )
    return render(title, columns, rows)


def soak_table(rows: list[Row]) -> str:
    def mib(key: str) -> Callable[[Row], str]:
        return field(key, 1)

    def targets(row: Row) -> str:
        verdicts = row.get("targets") or {}
        missed = [name for name, verdict in verdicts.items() if not verdict["met"]]
        return "all met" if verdicts and not missed else "missed: " + ",".join(missed) if missed else "-"

    columns: list[Column] = [
        server_column(),
        ("churn s", field("churned_s")),
        ("cycles", field("cycles")),
        ("acked", field("acked")),
        ("missed", field("missed")),
        ("doubled", field("doubled")),
        ("reordered", field("out_of_order")),
        ("RSS joined", mib("rss_joined_mib")),
        ("+history", mib("history_mib")),
        ("start", mib("rss_start_mib")),
        ("peak", mib("rss_peak_mib")),
        ("end", mib("rss_end_mib")),
        ("MiB/min last half", field("rss_slope_last_half_mib_per_min", 2)),
        ("fds start", field("fds_start")),
        ("end", field("fds_end")),
        ("tracebacks", field("tracebacks")),
        ("targets", targets),
    ]
    title = (
        "soak: steady members sit in their rooms while churners connect, send 1-5 messages, wait for the acks and "
        "leave (clean close, TCP reset, or a stall); RSS in MiB of the server process (joined: after the steady "
        "members joined; +history: what filling the rooms' history added; start: when the churn began)"
    )
    lines = [render(title, columns, rows)]
    for row in rows:
        if row.get("error"):
            continue
        lines.append(f"  {row['server']} ({row.get('variant', '')}):")
        for name, verdict in (row.get("targets") or {}).items():
            lines.append(f"    {'pass' if verdict['met'] else 'FAIL'}  {name}: {verdict['detail']}")
        lines.append(f"    RSS over time (s MiB): {rss_over_time(row)}")
    return "\n".join(lines)


def rss_over_time(row: Row, shown: int = 12) -> str:
    """A few of the RSS samples, evenly spaced: ``0 s 51.2, 35 s 58.0, ...``."""
    samples = row.get("rss_samples") or []
    if not samples:
        return "-"
    step = max(1, -(-len(samples) // shown))
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return ", ".join(f"{sample[0]:.0f} s {sample[1]:.1f}" for sample in picked)


TABLES: dict[str, Callable[[list[Row]], str]] = {
    "fanout": fanout_table,
    "rooms": rooms_table,
    "slow_consumer": slow_table,
    "idle": idle_table,
    "join": join_table,
    "restart": restart_table,
    "history": history_table,
    "storm": storm_table,
    "soak": soak_table,
}
