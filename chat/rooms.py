"""The room registry: which local connections are in which room, and the one lock that keeps it true.

The lock covers exactly the steps that must not interleave across an await: "first local member?
then subscribe, then register" and "last local member? then unregister, then unsubscribe". Nothing
is ever sent while holding it: fan-out only hands frames to each member's bounded buffer.

One member (one token's ``sub``) may hold several connections in a room, one per browser tab: the
room counts them, and only its first connection announces a join, only its last a leave.
"""

from __future__ import annotations

import anyio

from chat.backends import Backend
from chat.connection import Connection
from chat.exceptions import Removed, ServiceRestart
from chat.metrics import Metrics
from chat.protocol import Event, Message, Remove, Restart


class RoomRegistry:
    """Room -> local connections for this process, plus the connection count and its cap."""

    def __init__(self, backend: Backend, max_connections: int, metrics: Metrics | None = None) -> None:
        self._backend = backend
        self._max_connections = max_connections
        self._metrics = metrics
        self._rooms: dict[str, dict[Connection, None]] = {}
        self._ids: dict[str, dict[str, int]] = {}  # room -> member id -> its local connections
        self._lock = anyio.Lock()
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
                await self._backend.subscribe(connection.room)
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
                if self._metrics is not None:
                    self._metrics.rooms.dec()
                await self._backend.unsubscribe(connection.room)
            return count == 0

    def deliver(self, event: Event) -> None:
        """Hand an event to every local member of its room without awaiting any of them."""
        members = self._rooms.get(event.room)
        if not members:
            return
        if isinstance(event, Message):
            for connection in members:
                connection.deliver(event)
            if self._metrics is not None:
                self._metrics.delivered.inc(len(members))
            return
        if isinstance(event, Restart):
            for connection in list(members):
                connection.close(ServiceRestart("room restarted: reconnect to rejoin"))
            return
        if isinstance(event, Remove):
            self.remove_member(event.room, event.member_id)
            return
        frame, wire, sender = event.frame, event.wire, event.member.id
        everyone = event.kind == "typing"  # join and leave skip members without presence
        for connection in members:
            if (everyone or connection.presence) and connection.member.id != sender:
                connection.send(frame, wire)

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
