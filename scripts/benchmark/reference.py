"""What the two reference servers share: the little of the chat protocol they speak."""

from __future__ import annotations

import json


def message_text(data: str) -> str:
    """The chat text of a client frame: ``{"type":"message","text":T}``, or the whole frame when it is not JSON."""
    if data.startswith("{"):
        frame = json.loads(data)
        return str(frame.get("text", ""))
    return data


def encode(frame: object) -> str:
    """Compact JSON, as the chat server writes it (the clients' fast path reads compact frames)."""
    return json.dumps(frame, separators=(",", ":"))
