"""WebSocket framing of server frames, sans I/O.

A server frame is never masked, so the bytes of one text frame are the same for every member who
receives it: a broadcast is framed once and the same bytes object is written to every socket.
"""

from __future__ import annotations

import struct

_TEXT_FIN = 0x81


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked, unfragmented text frame carrying ``payload`` (UTF-8)."""
    size = len(payload)
    if size < 126:
        return bytes((_TEXT_FIN, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, size) + payload
