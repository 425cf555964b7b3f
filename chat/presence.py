"""A room's presence as this process's members were told it, and the changes not yet told (sans-I/O).

Joins and leaves reach a process one by one; telling every member of a room each of them in its
own write costs O(room size) per join, O(n^2) when n members come back at once after a restart.
So the registry collects a room's changes for ``presence_window`` seconds and announces them
together (``announce``): every member gets the window's frames in one write. What a member is
told is where each changed member ends, not every event, so a member that joins and leaves within
the window is announced to nobody, and one that leaves and comes back (a reconnect) neither.

A newcomer's welcome lists the room as it is now (``welcome``), pending changes included; at the
next announcement it is told only what changed after its welcome, the others what changed since
the last announcement. The list's encoding is kept until the room changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from chat.protocol import Member, Signal

Change = tuple[str, Member | None]
"""A member id and how it is now: present as this member, or gone (None)."""


class Announcement:
    """The ``join`` and ``leave`` frames for a member of the room, all in one write."""

    __slots__ = ("_subjects", "_text", "frames", "wire")

    def __init__(self, frames: list[Signal]) -> None:
        self.frames = frames
        self.wire = b"".join([signal.wire for signal in frames])
        """The frames as WebSocket bytes: one text message each."""
        self._text: str | None = None
        self._subjects = {signal.member.id for signal in frames}

    @property
    def texts(self) -> list[str]:
        """The frames' texts."""
        return [signal.frame for signal in self.frames]

    @property
    def text(self) -> str:
        """The frames as a ``batch=1`` message: JSON objects separated by newlines."""
        if self._text is None:
            self._text = "\n".join(self.texts)
        return self._text

    def for_member(self, member_id: str) -> Announcement | None:
        """What the member gets: these frames without the ones about itself (None if that leaves nothing)."""
        if member_id not in self._subjects:
            return self
        rest = [signal for signal in self.frames if signal.member.id != member_id]
        return Announcement(rest) if rest else None


class Window:
    """One window's changes, as announced: to the members welcomed before it, and to each newcomer."""

    __slots__ = ("_changes", "_room", "_signals", "_since", "_told", "everyone")

    def __init__(self, room: str, told: dict[str, Member], log: list[Change]) -> None:
        self._room = room
        self._told = told  # the list before the window
        self._changes: dict[str, list[tuple[int, Member | None]]] = {}  # member id -> (position, state), in order
        for position, (member_id, member) in enumerate(log):
            self._changes.setdefault(member_id, []).append((position, member))
        self._signals: dict[tuple[Member | None, Member | None], tuple[Signal, ...]] = {}
        self._since: dict[int, Announcement | None] = {}
        self.everyone = self.since(0)
        """What the members welcomed before the window are told (None: nothing)."""

    def since(self, position: int) -> Announcement | None:
        """What a member welcomed after the window's first ``position`` changes is told.

        A newcomer of a storm gets its own announcement: each costs one step per member that changed in the
        window, and each distinct change is encoded once.
        """
        if position in self._since:
            return self._since[position]
        frames: list[Signal] = []
        for member_id, changes in self._changes.items():
            if changes[-1][0] < position:
                continue  # the newcomer's welcome listed it as it ends
            was = self._told.get(member_id)
            for at, state in changes:
                if at >= position:
                    break
                was = state
            frames.extend(self._frames(was, changes[-1][1]))
        announcement = self._since[position] = Announcement(frames) if frames else None
        return announcement

    def _frames(self, was: Member | None, now: Member | None) -> tuple[Signal, ...]:
        """The frames that take a member from ``was`` to ``now`` (a leave, then a join), made once per window."""
        key = (was, now)
        signals = self._signals.get(key)
        if signals is None:
            if was == now:
                signals = ()
            else:
                leave = () if was is None else (Signal("leave", self._room, was),)
                signals = leave + (() if now is None else (Signal("join", self._room, now),))
            self._signals[key] = signals
        return signals


class RoomPresence:
    """One room's member list, as last announced (``told``) and as it is now (``current``)."""

    __slots__ = ("_listing", "_log", "current", "known", "room", "told")

    def __init__(self, room: str, members: Iterable[Member] | None = None) -> None:
        self.room = room
        self.known = members is not None
        """Whether the room's members were read yet (until ``reset``, changes only wait)."""
        self.told: dict[str, Member] = {member.id: member for member in members or ()}
        self.current = dict(self.told)
        self._log: list[Change] = []  # the changes since the last announcement, in order
        self._listing: str | None = None

    @property
    def pending(self) -> bool:
        """Whether changes wait to be announced."""
        return bool(self._log)

    def reset(self, members: Iterable[Member]) -> None:
        """The room's members as the backend lists them: the changes noted meanwhile come after them."""
        self.told = {member.id: member for member in members}
        self.current = dict(self.told)
        for member_id, member in self._log:
            self._apply(member_id, member)
        self.known = True
        self._listing = None

    def changed(self, signal: Signal) -> bool:
        """Note a ``join`` or ``leave``; True when it is the window's first change (time to schedule)."""
        first = not self._log
        member = signal.member if signal.kind == "join" else None
        self._log.append((signal.member.id, member))
        self._apply(signal.member.id, member)
        return first

    def resync(self, members: Iterable[Member]) -> bool:
        """The backend's list, after changes may have been missed: what differs is noted as changes.

        True when it is the window's first change (time to schedule).
        """
        first = not self._log
        listed = {member.id: member for member in members}
        for member_id in [member_id for member_id in self.current if member_id not in listed]:
            self._log.append((member_id, None))
            self._apply(member_id, None)
        for member_id, member in listed.items():
            if self.current.get(member_id) != member:
                self._log.append((member_id, member))
                self._apply(member_id, member)
        return first and bool(self._log)

    def welcome(self, you: Member) -> tuple[str, int | None]:
        """The ``members`` of a welcome into the room now (a JSON array; ``you`` with it), and where the
        newcomer's next announcement starts (None: with everyone's)."""
        position = len(self._log) or None
        current = self.current.get(you.id)
        if current is not None and current != you:  # another name under the same id: the welcome shows this one
            return "[" + ",".join((you if m.id == you.id else m).json for m in self.current.values()) + "]", position
        listing = self._listing
        if listing is None:
            listing = self._listing = ",".join(member.json for member in self.current.values())
        if current is not None:
            return "[" + listing + "]", position
        return "[" + listing + ("," if listing else "") + you.json + "]", position

    def announce(self) -> Window | None:
        """Close the window: what its changes tell whom (None when there are none, or the room is not read yet)."""
        if not self.known or not self._log:
            return None
        window = Window(self.room, self.told, self._log)
        self.told = dict(self.current)
        self._log = []
        return window

    def _apply(self, member_id: str, member: Member | None) -> None:
        if member is None:
            if self.current.pop(member_id, None) is not None:
                self._listing = None
        elif self.current.get(member_id) != member:
            self.current[member_id] = member
            self._listing = None
