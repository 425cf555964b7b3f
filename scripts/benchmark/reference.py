"""What the two reference servers share: the little of the chat protocol they speak.

Each reference server runs in a process of its own, so the member ids and per-room seqs here are that server's.
"""

from __future__ import annotations

import itertools
import json
import time

seqs: dict[str, int] = {}
"""Room -> the seq of its last message."""
ids = itertools.count(1)


def message_text(data: str) -> str:
    """The chat text of a client frame: ``{"type":"message","text":T}``, or the whole frame when it is not JSON."""
    if data.startswith("{"):
        frame = json.loads(data)
        return str(frame.get("text", ""))
    return data


def encode(frame: object) -> str:
    """Compact JSON, as the chat server writes it (the clients' fast path reads compact frames)."""
    return json.dumps(frame, separators=(",", ":"))


def new_member(name: str) -> dict[str, str]:
    """The ``{"id", "name"}`` of a member that just connected."""
    return {"id": f"m{next(ids)}", "name": name}


def welcome(room: str, me: dict[str, str]) -> str:
    """The ``welcome`` frame (no member list: the clients do not read it)."""
    return encode({"type": "welcome", "room": room, "you": me, "members": [], "seq": seqs.get(room, 0)})


def message(room: str, me: dict[str, str], data: str) -> str:
    """The ``message`` frame for a client frame ``data`` from ``me``, with the room's next seq."""
    text = message_text(data)
    seq = seqs[room] = seqs.get(room, 0) + 1
    stamp = int(time.time() * 1000)
    return encode({"type": "message", "room": room, "seq": seq, "from": me, "text": text, "ts": stamp})
