"""What a room tells the application: frozen dataclasses, one per kind of event, parsed from server frames.

``async for event in room`` yields a ``RoomEvent``: a ``Message``, a member's ``Join`` or ``Leave``, a
``Typing``, a ``Rejoined`` after every reconnect (``recovered`` says whether nothing was missed), and a
final ``Removed`` when the operator took this member out of the room.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Frame = Mapping[str, Any]
"""One server frame, a decoded JSON object."""


@dataclass(frozen=True)
class Member:
    """Someone in a room: the server's id for the connection, and the display name."""

    id: str
    name: str

    @classmethod
    def parse(cls, value: object) -> Member | None:
        """A member from a frame's ``{"id","name"}``, or None when it is not one."""
        if not isinstance(value, Mapping):
            return None
        member_id, name = value.get("id"), value.get("name")
        if not isinstance(member_id, str) or not isinstance(name, str):
            return None
        return cls(member_id, name)


@dataclass(frozen=True)
class Message:
    """A chat message: ``seq`` rises by exactly 1 per message in the room, ``ts`` is UNIX milliseconds."""

    room: str
    seq: int
    sender: Member
    text: str
    ts: int

    @classmethod
    def parse(cls, room: str, frame: object) -> Message | None:
        """A message from a ``message`` frame (or a history item), or None when it is not a valid one."""
        if not isinstance(frame, Mapping):
            return None
        seq, text, ts = frame.get("seq"), frame.get("text"), frame.get("ts")
        sender = Member.parse(frame.get("from"))
        if type(seq) is not int or not isinstance(text, str) or sender is None:
            return None
        return cls(room, seq, sender, text, ts if type(ts) is int else 0)


@dataclass(frozen=True)
class Join:
    """``member`` joined the room (presence is announced once per window: it may come after their first message)."""

    room: str
    member: Member


@dataclass(frozen=True)
class Leave:
    """``member`` left the room."""

    room: str
    member: Member


@dataclass(frozen=True)
class Typing:
    """``member`` is typing (sent at most every 2 s while they type)."""

    room: str
    member: Member


@dataclass(frozen=True)
class Rejoined:
    """The room was joined again after a reconnect (or a restart of its sequence).

    ``recovered``: every message missed meanwhile follows, once, in order. Otherwise the server could not
    recover them (a server without a durable store restarted, or too much was missed): some are lost, and the
    room's latest messages follow, where ``seq`` may have started again from 1 under the new ``epoch``.
    """

    room: str
    recovered: bool
    epoch: str


@dataclass(frozen=True)
class Removed:
    """The operator removed this member from the room; it is not rejoined, and the iteration ends."""

    room: str


RoomEvent = Message | Join | Leave | Typing | Rejoined | Removed
