"""The room registry: which local connections are in which room, and the one lock that keeps it true.

The lock covers exactly the steps that must not interleave across an await: "first local member?
then subscribe, then register" and "last local member? then unregister, then unsubscribe". Nothing
is ever sent while holding it: fan-out only hands frames to each member's bounded buffer.

One member (one token's ``sub``) may hold several connections in a room, one per browser tab: the
room counts them, and only its first connection announces a join, only its last a leave.

Joins and leaves reach the members together, once per window per room (``chat.presence``): an
announcement costs one write per local member, so a room's window grows with its size
(``presence_window`` for up to ``PRESENCE_ROOM_SIZE`` members, in proportion beyond, at most
``presence_window_max``), which bounds what presence costs per room whatever the rate of joins.
Messages and typing never wait for it.
"""

from __future__ import annotations

import asyncio

import anyio

from chat.backends import Backend
from chat.connection import Connection
from chat.exceptions import Removed, ServiceRestart
from chat.metrics import Metrics
from chat.presence import RoomPresence
from chat.protocol import Event, Message, Present, Remove, Restart

PRESENCE_ROOM_SIZE = 10
"""Local members up to which a room announces once per ``presence_window``; a larger room waits in proportion."""


class RoomRegistry:
    """Room -> local connections for this process, plus the connection count and its cap."""

    def __init__(
        self,
        backend: Backend,
        max_connections: int,
        metrics: Metrics | None = None,
        presence_window: float = 0.0,
        presence_window_max: float = 0.0,
    ) -> None:
        self._backend = backend
        self._max_connections = max_connections
        self._metrics = metrics
        self._window = presence_window
        self._window_max = max(presence_window, presence_window_max)
        self._rooms: dict[str, dict[Connection, None]] = {}
        self._ids: dict[str, dict[str, int]] = {}  # room -> member id -> its local connections
        self._presence: dict[str, RoomPresence] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}  # rooms with changes waiting -> when they are told
        self._newcomers: dict[str, dict[Connection, int]] = {}  # room -> welcomed within its window -> where
        self._lock = anyio.Lock(fast_acquire=True)  # no checkpoint when uncontended: a join's one lock costs less
        self._connections = 0

    @property
    def connections(self) -> int:
        """Connections admitted and not yet released."""
        return self._connections

    @property
    def room_count(self) -> int:
        """Rooms with at least one local member."""
        return len(self._rooms)

    def rooms(self) -> dict[str, list[Connection]]:
        """A copy of room -> local connections."""
        return {room: list(members) for room, members in self._rooms.items()}

    def admit(self) -> bool:
        """Count one more connection unless the cap is reached."""
        if self._connections >= self._max_connections:
            return False
        self._connections += 1
        return True

    def release(self) -> None:
        """Count one connection less."""
        self._connections -= 1

    async def add(self, connection: Connection) -> bool:
        """Register the connection, subscribing first if it is the room's first here.

        Returns True when it is its member's first connection in the room here (a join to announce).
        """
        async with self._lock:
            members = self._rooms.get(connection.room)
            if members is None:
                await self._open(connection.room)
                members = self._rooms[connection.room] = {}
                self._ids[connection.room] = {}
                if self._metrics is not None:
                    self._metrics.rooms.inc()
            members[connection] = None
            ids = self._ids[connection.room]
            count = ids[connection.member.id] = ids.get(connection.member.id, 0) + 1
            return count == 1

    async def remove(self, connection: Connection) -> bool:
        """Unregister the connection; unsubscribe when the room has no local member left.

        Returns True when the member left the room here (its last local connection there), False
        when it still has another, or when the connection was not registered (already removed, or
        never added).
        """
        async with self._lock:
            members = self._rooms.get(connection.room)
            if members is None or connection not in members:
                return False
            del members[connection]
            ids = self._ids[connection.room]
            count = ids[connection.member.id] - 1
            if count:
                ids[connection.member.id] = count
            else:
                del ids[connection.member.id]
            if not members:
                del self._rooms[connection.room]
                del self._ids[connection.room]
                self._presence.pop(connection.room, None)
                timer = self._timers.pop(connection.room, None)
                if timer is not None:
                    timer.cancel()
                self._newcomers.pop(connection.room, None)
                if self._metrics is not None:
                    self._metrics.rooms.dec()
                await self._backend.unsubscribe(connection.room)
            return count == 0

    def welcome_members(self, connection: Connection) -> str:
        """The ``members`` of the connection's welcome (a JSON array): the room as it is now, the member with it.

        Send the welcome without awaiting in between: the next announcement tells this member what
        changed after it.
        """
        presence = self._presence.get(connection.room)
        if presence is None:
            return "[" + connection.member.json + "]"
        listing, position = presence.welcome(connection.member)
        if position is not None:
            self._newcomers.setdefault(connection.room, {})[connection] = position
        return listing

    async def _open(self, room: str) -> None:
        """Subscribe to a room that gets its first local member here, and learn who is in it.

        Joins and leaves that arrive meanwhile wait, and are applied to the list read.
        """
        presence = self._presence[room] = RoomPresence(room)
        try:
            await self._backend.subscribe(room)
        except BaseException:
            del self._presence[room]
            raise
        try:
            presence.reset(await self._backend.members(room))
        except BaseException:
            del self._presence[room]
            with anyio.CancelScope(shield=True):
                await self._backend.unsubscribe(room)
            raise
        if presence.pending:
            self._changed(room)

    def deliver(self, event: Event) -> None:
        """Hand an event to every local member of its room without awaiting any of them (joins and leaves wait
        for the room's next announcement)."""
        members = self._rooms.get(event.room)
        if isinstance(event, Message):
            if members:
                for connection in members:
                    connection.deliver(event)
                if self._metrics is not None:
                    self._metrics.delivered.inc(len(members))
        elif isinstance(event, Restart):
            for connection in list(members or ()):
                connection.close(ServiceRestart("room restarted: reconnect to rejoin"))
        elif isinstance(event, Remove):
            self.remove_member(event.room, event.member_id)
        elif isinstance(event, Present):
            presence = self._presence.get(event.room)
            if presence is not None and presence.known and presence.resync(event.members):
                self._changed(event.room)
        elif event.kind == "typing":
            frame, wire, sender = event.frame, event.wire, event.member.id
            for connection in members or ():
                if connection.member.id != sender:
                    connection.send(frame, wire)
        else:  # a room being opened has no members yet, but its presence keeps what arrives meanwhile
            presence = self._presence.get(event.room)
            if presence is not None and presence.changed(event):
                self._changed(event.room)

    def _changed(self, room: str) -> None:
        """The room has changes to announce: now without a window, else at the end of the room's window."""
        if not self._window:
            self._announce(room)
        elif room not in self._timers:
            size = len(self._rooms.get(room, ()))
            window = min(self._window_max, self._window * max(1.0, size / PRESENCE_ROOM_SIZE))
            self._timers[room] = asyncio.get_running_loop().call_later(window, self._window_ended, room)

    def announce_pending(self) -> None:
        """Announce every room's waiting changes now, without waiting for their windows' end."""
        timers, self._timers = self._timers, {}
        for room, timer in timers.items():
            timer.cancel()
            self._announce(room)

    def _window_ended(self, room: str) -> None:
        del self._timers[room]
        self._announce(room)

    def _announce(self, room: str) -> None:
        """Tell the room's welcomed members with presence what changed, each in one write, never about itself."""
        presence = self._presence.get(room)
        window = None if presence is None else presence.announce()
        newcomers = self._newcomers.pop(room, None) or {}
        if window is None:
            return
        for connection in self._rooms.get(room, ()):
            if connection.presence and connection.welcomed:
                position = newcomers.get(connection)
                told = window.everyone if position is None else window.since(position)
                if told is not None:
                    told = told.for_member(connection.member.id)
                    if told is not None:
                        connection.announce(told)

    def remove_member(self, room: str, member_id: str) -> int:
        """Close every local connection of the member in the room with 1008 ``removed`` (on ``/ws``: take it out of
        that room); how many there were."""
        if member_id not in self._ids.get(room, ()):
            return 0
        removed = [connection for connection in self._rooms[room] if connection.member.id == member_id]
        error = Removed("removed")
        for connection in removed:
            if self._metrics is not None and connection.is_open:
                self._metrics.policy_closes.labels(error.reason).inc()
            connection.close(error)
        return len(removed)
