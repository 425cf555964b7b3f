"""One room as the client knows it, sans I/O: what each server frame means for it, and what to send.

A ``RoomState`` keeps the room's epoch and the last seq handed to the application, so a rejoin asks for
exactly what was missed (``since``/``epoch``) and a message seen twice is dropped (by seq); it keeps the
members, and the outbox: messages waiting to be sent (while disconnected) or for their ack. Each method takes a
frame and returns an ``Outcome``: the events for the application, the acks and failures of sends, the frames
to send now, and what the connection should do next. Nothing here waits, reads a clock or touches a socket.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .events import Frame, Join, Leave, Member, Message, Rejoined, Removed, RoomEvent, Typing
from .exceptions import ClientError, MessageTooLarge, OutboxFull, Refused, RoomClosed, ServerError

MAX_FRAME_BYTES = 60000
"""Below the server's 64 KiB frame limit, past which it closes the connection (so a resend would loop)."""
RATE_LIMITED = "rate_limited"
RETRY_JOIN_CODES = frozenset({"unavailable", RATE_LIMITED})
"""A join refused with one of these is asked again later; any other refusal is final."""

Action = Literal["rejoin", "retry_join", "removed", "refused"]
"""What the connection should do for the room after a frame: join again now (its sequence restarted), join
again after a backoff (the server was busy), stop (removed by the operator, or the join was refused)."""

_refs = itertools.count(1)


def next_ref(kind: str) -> str:
    """A ref unique in this process: acks, errors and history answers name the request they answer by it."""
    return f"{kind}{next(_refs)}"


@dataclass
class Pending:
    """A message in the outbox: ``sent`` once it went out on the current connection."""

    ref: str
    text: str
    sent: bool = False


@dataclass
class Outcome:
    """What a frame meant: for the application, for the senders, for the connection."""

    events: list[RoomEvent] = field(default_factory=list)
    acked: list[tuple[str, int]] = field(default_factory=list)
    """(ref, seq) of sends that made it."""
    failed: list[tuple[str, ClientError]] = field(default_factory=list)
    """(ref, why) of sends that did not."""
    send: list[dict[str, Any]] = field(default_factory=list)
    """Frames to send now, in order."""
    action: Action | None = None
    refusal: Refused | None = None
    resend_later: bool = False
    """Messages were refused as ``rate_limited``: they wait in the outbox, to go out again after a pause."""


def message_frame(room: str, pending: Pending) -> dict[str, Any]:
    return {"type": "message", "room": room, "text": pending.text, "ref": pending.ref}


def frame_size(frame: dict[str, Any]) -> int:
    return len(json.dumps(frame, separators=(",", ":")).encode())


class RoomState:
    """One room: its sequence position, members and outbox, and what each server frame changes."""

    def __init__(self, room: str, max_outbox: int = 1000) -> None:
        self.room = room
        self.max_outbox = max_outbox
        self.epoch: str | None = None
        self.last_seq = 0
        """The seq of the last message handed to the application (0: none yet)."""
        self.members: dict[str, Member] = {}
        self.me: Member | None = None
        self.recovered: bool | None = None
        """Whether the last rejoin recovered every missed message (None: never rejoined)."""
        self.joined = False
        """Welcomed on the current connection."""
        self.join_ref: str | None = None
        self.outbox: list[Pending] = []
        self._my_ids: set[str] = set()
        self._own_unacked: dict[int, str] = {}
        """seq -> text of our own messages delivered before their ack: proof that a send made it."""

    # --- joining ---------------------------------------------------------------------------------

    def resume(self) -> dict[str, Any]:
        """``since`` and ``epoch`` for the next join (empty before the first welcome)."""
        return {} if self.epoch is None else {"since": self.last_seq, "epoch": self.epoch}

    def join_frame(self) -> dict[str, Any]:
        """A v1.1 ``join`` (it recovers from where the application is, once joined before)."""
        self.join_ref = next_ref("j")
        return {"type": "join", "room": self.room, "ref": self.join_ref, **self.resume()}

    def disconnected(self) -> None:
        """The connection went (or the room restarted): not joined until the next welcome."""
        self.joined = False
        self.join_ref = None

    def welcome(self, frame: Frame) -> Outcome:
        """Joined (again): the history the application has not seen, presence changes meanwhile, and the outbox."""
        out = Outcome()
        epoch = frame.get("epoch")
        epoch = epoch if isinstance(epoch, str) else ""
        rejoining = self.epoch is not None
        if rejoining:
            recovered = frame.get("recovered") is True and epoch == self.epoch
            self.recovered = recovered
            out.events.append(Rejoined(self.room, recovered, epoch))
            if epoch != self.epoch:
                self.last_seq = 0  # a new sequence: its seqs start over
        you = Member.parse(frame.get("you"))
        if you is not None:
            self.me = you
            self._my_ids.add(you.id)
        members = {m.id: m for m in map(Member.parse, _items(frame.get("members"))) if m is not None}
        if rejoining:
            out.events.extend(self._presence_changes(members))
        self.members = members
        for item in _items(frame.get("history")):
            out.events.extend(self._deliver(Message.parse(self.room, item)))
        seq = frame.get("seq")
        if type(seq) is int and seq > self.last_seq:
            self.last_seq = seq
        self.epoch = epoch
        self.joined = True
        self.join_ref = None
        self._reconcile_outbox(out)
        return out

    def _presence_changes(self, members: dict[str, Member]) -> Iterable[RoomEvent]:
        """Who came and went while we were away, as if we had seen their joins and leaves."""
        for member_id, member in self.members.items():
            if member_id not in members and member_id not in self._my_ids:
                yield Leave(self.room, member)
        for member_id, member in members.items():
            if member_id not in self.members and member_id not in self._my_ids:
                yield Join(self.room, member)

    def _reconcile_outbox(self, out: Outcome) -> None:
        """Messages in flight when the connection went: made it if our message with that text came since,
        else sent again; then everything queued goes out, in order."""
        candidates = sorted(self._own_unacked.items())
        for pending in self.outbox:
            if not pending.sent:
                continue
            match = next((seq for seq, text in candidates if text == pending.text), None)
            if match is None:
                pending.sent = False
            else:
                candidates.remove((match, pending.text))
                out.acked.append((pending.ref, match))
        self._own_unacked.clear()
        acked = {ref for ref, _ in out.acked}
        self.outbox = [p for p in self.outbox if p.ref not in acked]
        out.send.extend(self.flush())

    def flush(self) -> list[dict[str, Any]]:
        """The frames of every message waiting in the outbox, in order (nothing unless joined)."""
        if not self.joined:
            return []
        frames = []
        for pending in self.outbox:
            if not pending.sent:
                pending.sent = True
                frames.append(message_frame(self.room, pending))
        return frames

    # --- frames while joined ---------------------------------------------------------------------

    def receive(self, frame: Frame) -> Outcome:
        """Any frame about this room but the welcome."""
        kind = frame.get("type")
        if kind == "welcome":
            return self.welcome(frame)
        if kind == "left":
            return self._left(frame)
        if kind == "error":
            return self._error(frame)
        if kind == "ack":
            return self._ack(frame)
        out = Outcome()
        if not self.joined:
            return out
        if kind == "message":
            out.events.extend(self._deliver(Message.parse(self.room, frame)))
        elif kind in ("join", "leave", "typing"):
            out.events.extend(self._presence(kind, frame))
        return out

    def _deliver(self, message: Message | None) -> list[RoomEvent]:
        """A message for the application, unless it was handed over already (its seq is not past the last)."""
        if message is None or message.seq <= self.last_seq:
            return []
        self.last_seq = message.seq
        if message.sender.id in self._my_ids and any(p.sent and p.text == message.text for p in self.outbox):
            self._own_unacked[message.seq] = message.text
        return [message]

    def _presence(self, kind: str, frame: Frame) -> list[RoomEvent]:
        member = Member.parse(frame.get("from" if kind == "typing" else "member"))
        if member is None:
            return []
        if kind == "join":
            self.members[member.id] = member
        elif kind == "leave":
            self.members.pop(member.id, None)
        if member.id in self._my_ids:
            return []  # ourselves, on an earlier connection
        if kind == "join":
            return [Join(self.room, member)]
        if kind == "leave":
            return [Leave(self.room, member)]
        return [Typing(self.room, member)]

    def _ack(self, frame: Frame) -> Outcome:
        out = Outcome()
        ref, seq = frame.get("ref"), frame.get("seq")
        pending = self._take(ref)
        if pending is not None and type(seq) is int:
            self._own_unacked.pop(seq, None)
            out.acked.append((pending.ref, seq))
        return out

    def _error(self, frame: Frame) -> Outcome:
        out = Outcome()
        ref = frame.get("ref")
        code, detail = str(frame.get("code")), str(frame.get("detail") or "")
        if ref is not None and ref == self.join_ref:
            self.join_ref = None
            if code in RETRY_JOIN_CODES:
                out.action = "retry_join"
            else:
                out.action = "refused"
                out.refusal = Refused(code, detail or "the server refused to let us join this room")
            return out
        if code == RATE_LIMITED:
            waiting = next((p for p in self.outbox if p.ref == ref), None)
            if waiting is not None:  # not lost, only early: it goes out again, in its place
                waiting.sent = False
                out.resend_later = True
                return out
        pending = self._take(ref)
        if pending is not None:
            out.failed.append((pending.ref, ServerError(code, detail)))
        return out

    def _left(self, frame: Frame) -> Outcome:
        """Taken out of the room: ``restart`` joins again, ``removed`` ends it; any other ``left`` answers a leave."""
        out = Outcome()
        reason = frame.get("reason")
        if reason == "restart":
            self.disconnected()
            out.action = "rejoin"
        elif reason == "removed":
            self.disconnected()
            out.action = "removed"
            out.events.append(Removed(self.room))
            out.failed.extend(self.close(RoomClosed(f"removed from {self.room}")))
        return out

    # --- sending ---------------------------------------------------------------------------------

    def queue(self, text: str) -> tuple[Pending, dict[str, Any] | None]:
        """Put a message in the outbox: with its frame when it can go out now (joined, nothing waiting before
        it), else None.

        Raises ``MessageTooLarge`` for a message that could never be sent, ``OutboxFull`` past ``max_outbox``.
        """
        pending = Pending(next_ref("m"), text)
        frame = message_frame(self.room, pending)
        if frame_size(frame) > MAX_FRAME_BYTES:
            raise MessageTooLarge(f"a message frame may not pass {MAX_FRAME_BYTES} bytes")
        if len(self.outbox) >= self.max_outbox:
            raise OutboxFull(f"{len(self.outbox)} messages to {self.room} already wait to be sent")
        waiting = any(not p.sent for p in self.outbox)
        self.outbox.append(pending)
        if not self.joined or waiting:
            return pending, None  # after those waiting already
        pending.sent = True
        return pending, frame

    def close(self, error: ClientError) -> list[tuple[str, ClientError]]:
        """Empty the outbox: every message in it fails with ``error``."""
        failed = [(pending.ref, error) for pending in self.outbox]
        self.outbox = []
        self._own_unacked.clear()
        return failed

    def _take(self, ref: object) -> Pending | None:
        for index, pending in enumerate(self.outbox):
            if pending.ref == ref:
                return self.outbox.pop(index)
        return None


def _items(value: object) -> list[object]:
    return value if isinstance(value, list) else []
