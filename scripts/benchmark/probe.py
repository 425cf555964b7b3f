"""One member driven from the harness itself (``websockets``' sync client), for requests timed one at a time.

``restart`` and ``history`` time single requests (a join up to its welcome, a history page), not a
flow of deliveries, so they need no client processes: one blocking connection here is enough, and
its cost is the same for every server. Every wait is bounded.
"""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

Frame = dict[str, Any]
MAX_FRAME = 16 * 2**20
RETRY = 0.005
"""Seconds between attempts to join a server that does not answer yet."""


class ProbeFailed(RuntimeError):
    """The server did not answer as the protocol says, or not in time."""


def url(port: int, room: str) -> str:
    return f"ws://127.0.0.1:{port}/ws/{room}?name=probe"


def join(port: int, room: str, timeout: float) -> tuple[ClientConnection, Frame]:
    """Join ``room``: the open connection and its welcome."""
    connection = connect(url(port, room), open_timeout=timeout, compression=None, max_size=MAX_FRAME, proxy=None)
    try:
        welcome = receive(connection, "welcome", None, timeout)
    except BaseException:
        connection.close()
        raise
    return connection, welcome


def join_when_serving(port: int, room: str, deadline: float) -> tuple[ClientConnection, Frame, float]:
    """Join as soon as the server answers (retrying until ``deadline``): the connection, its welcome, and when."""
    while True:
        try:
            connection, welcome = join(port, room, max(0.1, deadline - time.monotonic()))
            return connection, welcome, time.monotonic()
        except (OSError, WebSocketException, ProbeFailed) as exc:
            if time.monotonic() + RETRY >= deadline:
                raise ProbeFailed(f"no welcome in {room!r} before the deadline: {exc}") from None
            time.sleep(RETRY)


def receive(connection: ClientConnection, kind: str, ref: int | None, timeout: float) -> Frame:
    """The next frame of ``kind`` (with ``ref``, if given); other frames (join, leave, messages) are skipped."""
    return receive_timed(connection, kind, ref, timeout)[0]


def receive_timed(connection: ClientConnection, kind: str, ref: int | None, timeout: float) -> tuple[Frame, float]:
    """``receive``, and when (``time.perf_counter()``) its frame arrived, before it was decoded."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeFailed(f"no {kind} frame within {timeout:g} s")
        try:
            data = connection.recv(timeout=remaining)
        except TimeoutError:
            raise ProbeFailed(f"no {kind} frame within {timeout:g} s") from None
        arrived = time.perf_counter()
        for line in str(data).splitlines():
            frame: Frame = json.loads(line)
            if frame.get("type") == "error":
                raise ProbeFailed(f"error frame: {line[:200]}")
            if frame.get("type") == kind and (ref is None or frame.get("ref") == ref):
                return frame, arrived


def publish(connection: ClientConnection, count: int, size: int, window: int, timeout: float) -> int:
    """Publish ``count`` texts of ``size`` characters with at most ``window`` unacknowledged; the last seq."""
    text = "x" * size
    last = 0
    for first in range(0, count, window):
        refs = range(first + 1, min(count, first + window) + 1)
        for ref in refs:
            connection.send(json.dumps({"type": "message", "text": text, "ref": ref}))
        for ref in refs:
            last = int(receive(connection, "ack", ref, timeout)["seq"])
    return last


def page(connection: ClientConnection, before: int, limit: int, ref: int, timeout: float) -> tuple[float, Frame]:
    """One ``history`` request: its round trip in seconds, and the answer."""
    started = time.perf_counter()
    connection.send(json.dumps({"type": "history", "before": before, "limit": limit, "ref": ref}))
    answer, arrived = receive_timed(connection, "history", ref, timeout)
    return arrived - started, answer
