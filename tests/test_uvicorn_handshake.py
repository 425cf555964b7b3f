"""``accept_key``: which upgrade requests are answered from httptools' parse, and that ``websockets`` agrees."""

from __future__ import annotations

import base64

import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.server import ServerProtocol
from websockets.utils import accept_key as websocket_accept

from chat.uvicorn.handshake import Headers, accept_key

KEY = base64.b64encode(b"0123456789abcdef")
URL = b"/ws/lobby?name=ann"
PLAIN: Headers = [
    (b"host", b"127.0.0.1:8000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def replaced(name: bytes, value: bytes | None) -> Headers:
    """The plain request's headers with ``name``'s value replaced (None: left out)."""
    if value is None:
        return [(key, old) for key, old in PLAIN if key != name]
    return [(key, value if key == name else old) for key, old in PLAIN]


def websockets_answer(method: str, url: bytes, headers: Headers, extensions: bool) -> tuple[int, str | None]:
    """The status and ``Sec-WebSocket-Accept`` of ``websockets``' answer to the request as uvicorn hands it over."""
    conn = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if extensions else [])
    lines = [
        f"{method} ".encode() + url + b" HTTP/1.1\r\n",
        *(name + b": " + value + b"\r\n" for name, value in headers),
    ]
    conn.receive_data(b"".join(lines) + b"\r\n")
    requests = [event for event in conn.events_received() if isinstance(event, Request)]
    if not requests:
        return 400, None  # websockets could not read the request: uvicorn answers 400
    response = conn.accept(requests[0])
    negotiated = "Sec-WebSocket-Extensions" in response.headers or "Sec-WebSocket-Protocol" in response.headers
    return (0 if negotiated else response.status_code), response.headers.get("Sec-WebSocket-Accept")


ACCEPTED = [
    pytest.param("GET", URL, PLAIN, False, id="plain"),
    pytest.param("GET", URL, [*PLAIN, (b"origin", b"https://example.com")], False, id="one origin"),
    pytest.param("GET", URL, replaced(b"connection", b"keep-alive, Upgrade"), False, id="connection list"),
    pytest.param("GET", URL, replaced(b"upgrade", b"WebSocket"), False, id="upgrade in capitals"),
    pytest.param("GET", URL, [*PLAIN, (b"sec-websocket-extensions", b"permessage-deflate")], False, id="no deflate"),
    pytest.param("GET", URL, [*PLAIN, (b"x-long", b"x" * (MAX_LINE_LENGTH - 10))], False, id="longest line"),
    pytest.param("GET", b"/" * (MAX_LINE_LENGTH - 15), PLAIN, False, id="longest url"),
    pytest.param("GET", URL, [*PLAIN, *[(b"x", b"y")] * (MAX_NUM_HEADERS - len(PLAIN))], False, id="most headers"),
    pytest.param("GET", URL, [*PLAIN, (b"x-latin", "é".encode("latin-1"))], False, id="obs-text value"),
]
LEFT_TO_WEBSOCKETS = [
    pytest.param("POST", URL, PLAIN, False, id="not GET"),
    pytest.param(
        "GET", URL, [*PLAIN, (b"origin", b"https://a.example"), (b"origin", b"https://b")], False, id="origins"
    ),
    pytest.param("GET", URL, replaced(b"connection", b"keep-alive"), False, id="no connection upgrade"),
    pytest.param("GET", URL, replaced(b"connection", b"upgrade,,keep-alive"), False, id="connection empty item"),
    pytest.param("GET", URL, [*PLAIN, (b"connection", b"upgrade")], False, id="two connection headers"),
    pytest.param("GET", URL, replaced(b"upgrade", b"websocket, h2c"), False, id="two upgrades"),
    pytest.param("GET", URL, replaced(b"upgrade", None), False, id="no upgrade"),
    pytest.param("GET", URL, replaced(b"sec-websocket-key", None), False, id="no key"),
    pytest.param("GET", URL, replaced(b"sec-websocket-key", b"c2hvcnQ="), False, id="short key"),
    pytest.param("GET", URL, replaced(b"sec-websocket-key", KEY[:-2] + b"!="), False, id="key not base64"),
    pytest.param("GET", URL, [*PLAIN, (b"sec-websocket-key", KEY)], False, id="two keys"),
    pytest.param("GET", URL, replaced(b"sec-websocket-version", b"8"), False, id="version 8"),
    pytest.param("GET", URL, replaced(b"sec-websocket-version", None), False, id="no version"),
    pytest.param("GET", URL, [*PLAIN, (b"sec-websocket-version", b"13")], False, id="two versions"),
    pytest.param("GET", URL, [*PLAIN, (b"sec-websocket-protocol", b"chat")], False, id="subprotocol"),
    pytest.param("GET", URL, [*PLAIN, (b"sec-websocket-extensions", b"permessage-deflate")], True, id="deflate"),
    pytest.param("GET", URL, [*PLAIN, (b"content-length", b"0")], False, id="content-length"),
    pytest.param("GET", URL, [*PLAIN, (b"transfer-encoding", b"chunked")], False, id="transfer-encoding"),
    pytest.param("GET", URL, [*PLAIN, (b"x-long", b"x" * (MAX_LINE_LENGTH - 3))], False, id="line too long"),
    pytest.param("GET", b"/" * (MAX_LINE_LENGTH - 14), PLAIN, False, id="url too long"),
    pytest.param("GET", URL, [*PLAIN, *[(b"x", b"y")] * (MAX_NUM_HEADERS + 1 - len(PLAIN))], False, id="too many"),
]


@pytest.mark.parametrize(("method", "url", "headers", "extensions"), ACCEPTED)
def test_a_request_websockets_accepts_as_it_is_gets_its_accept_key(
    method: str, url: bytes, headers: Headers, extensions: bool
) -> None:
    """A request ``websockets`` accepts negotiating nothing gets the same ``Sec-WebSocket-Accept``."""
    key = accept_key(method, url, headers, extensions)
    assert key == websocket_accept(KEY.decode())
    assert websockets_answer(method, url, headers, extensions) == (101, key)


@pytest.mark.parametrize(("method", "url", "headers", "extensions"), LEFT_TO_WEBSOCKETS)
def test_any_other_request_is_left_to_websockets(method: str, url: bytes, headers: Headers, extensions: bool) -> None:
    """A request ``websockets`` refuses, or accepts only negotiating something or reading more, gets None."""
    assert accept_key(method, url, headers, extensions) is None
