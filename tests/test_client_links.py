"""The client's pure edges: addresses, batched frames, refusal bodies, failure codes."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from chat.client.client import base_url
from chat.client.links import Options, failure_code, frames, refusal_reason


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8000", "ws://127.0.0.1:8000"),
        ("ws://127.0.0.1:8000/", "ws://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/chat/", "ws://127.0.0.1:8000/chat"),
        ("https://example.org/chat", "wss://example.org/chat"),
    ],
)
def test_base_url(url: str, base: str) -> None:
    """http(s) becomes ws(s), the trailing slash goes: the prefix is kept for /ws and /ws/{room}."""
    assert base_url(url) == base


def test_base_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="ftp"):
        base_url("ftp://127.0.0.1")


def test_urls_carry_the_name_batch_and_resume_point() -> None:
    """name and batch=1 always (name only when given), since/epoch for a v1 rejoin."""
    options = Options("ws://h/chat", name="ann b")
    assert options.url("/ws", {}) == "ws://h/chat/ws?name=ann+b&batch=1"
    assert Options("ws://h").url("/ws/lobby", {"since": 4, "epoch": "e1"}) == "ws://h/ws/lobby?batch=1&since=4&epoch=e1"


@pytest.mark.parametrize(
    ("data", "types"),
    [
        ('{"type":"hello"}', ["hello"]),
        ('{"type":"join"}\n{"type":"leave"}', ["join", "leave"]),  # batch=1
        ('{"type":"join"}\nnot json\n[1]', ["join"]),
        (b'{"type":"hello"}', []),  # binary: not a server frame
    ],
)
def test_frames_of_a_message(data: str | bytes, types: list[str]) -> None:
    """One WebSocket message, one frame or (batched) one a line; anything but a JSON object is skipped."""
    assert [frame["type"] for frame in frames(data)] == types


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b'{"type":"error","code":"forbidden","detail":"bad token"}', ("forbidden", "bad token")),
        (b"Not Found", ("forbidden", "Not Found")),
        (b"", ("forbidden", "")),
    ],
)
def test_the_reason_of_a_refused_handshake(body: bytes, refusal: tuple[str, str]) -> None:
    assert refusal_reason(body) == refusal


@pytest.mark.parametrize(("status", "code"), [(429, 1013), (503, 1013), (500, 1006), (502, 1006)])
def test_a_failed_handshake_counts_as_busy_or_dropped(status: int, code: int) -> None:
    """429 and 503 wait as long as a 1013; any other failure as a dropped connection."""
    assert failure_code(InvalidStatus(Response(status, "", Headers()))) == code
    assert failure_code(OSError()) == 1006
