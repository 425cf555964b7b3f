"""WebSocket frames as a client puts them on the wire, for tests that speak to a server through a raw socket."""

from __future__ import annotations

import os
import struct


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One complete, masked client frame."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masks = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(masks, "big")).to_bytes(size, "big")
    return header + mask + masked
