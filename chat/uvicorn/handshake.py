"""The opening handshake of a WebSocket as httptools parsed it, sans I/O: can it be accepted without a second parse?

uvicorn hands an upgrade request to its websockets protocol as bytes, which ``websockets`` parses a
second time, line by line in Python, and keeps (the parser's frame holds the request for the
connection's life). ``accept_key`` answers the common request from what httptools already parsed:
a GET with one well-formed key, version 13, and nothing to negotiate. Anything else (a bad or
missing key, a subprotocol or an extension offered to a server that compresses, a body, a line or a
header count over ``websockets``' limits) gets ``None``, and ``websockets`` answers it as before.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS
from websockets.utils import accept_key as websocket_accept

Headers = Sequence[tuple[bytes, bytes]]

_TOKEN_LIST = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:[ \t]*,[ \t]*[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*")
"""A ``Connection`` value that ``websockets`` reads as plain tokens (no empty items, no quoting)."""
_ONE_EACH = (b"sec-websocket-key", b"sec-websocket-version", b"connection", b"upgrade")
_LEFT_TO_WEBSOCKETS = (b"sec-websocket-protocol", b"content-length", b"transfer-encoding")
"""Headers whose presence sends the request the long way: ``websockets`` parses and judges them."""
_REQUEST_LINE = len(b"GET  HTTP/1.1\r\n")
_HEADER_LINE = len(b": \r\n")


def accept_key(method: str, url: bytes, headers: Headers, extensions: bool) -> str | None:
    """The ``Sec-WebSocket-Accept`` value of a request ``websockets`` would accept as it is, negotiating nothing;
    None when ``websockets`` should judge it (``extensions``: the server offers permessage-deflate).

    ``headers`` are httptools', names lowercased, values trimmed; httptools has already refused the
    characters that ``websockets`` would refuse in names and values.
    """
    if method != "GET" or not url.isascii() or len(url) + _REQUEST_LINE > MAX_LINE_LENGTH:
        return None
    if len(headers) > MAX_NUM_HEADERS:
        return None
    found: dict[bytes, bytes] = {}
    origins = 0
    for name, value in headers:
        if len(name) + len(value) + _HEADER_LINE > MAX_LINE_LENGTH or name in _LEFT_TO_WEBSOCKETS:
            return None
        if name in _ONE_EACH:
            if name in found:
                return None
            found[name] = value
        elif name == b"origin":
            origins += 1
        elif name == b"sec-websocket-extensions" and extensions:
            return None
    if origins > 1 or found.get(b"sec-websocket-version") != b"13":
        return None
    if found.get(b"upgrade", b"").lower() != b"websocket":
        return None
    connection = found.get(b"connection", b"")
    if not _TOKEN_LIST.fullmatch(connection) or b"upgrade" not in _tokens(connection):
        return None
    key = found.get(b"sec-websocket-key")
    if key is None or not _valid_key(key):
        return None
    return websocket_accept(key.decode("ascii"))


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def _valid_key(key: bytes) -> bool:
    """Whether the key is what ``websockets`` asks for: 16 bytes in base64."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False
