"""The room registry: which local connections are in which room, and the one lock that keeps it true.

The lock covers exactly the steps that must not interleave across an await: "first local member?
then subscribe, then register" and "last local member? then unregister, then unsubscribe". Nothing
is ever sent while holding it: fan-out only hands frames to each member's bounded buffer.
"""

from __future__ import annotations

import anyio

from chat.backends import Backend
from chat.connection import Connection
from chat.protocol import Event, Message, Restart

SERVICE_RESTART = 1012


class RoomRegistry:
    """Room -> {member id -> connection} for this process, plus the connection count and its cap."""

    def __init__(self, backend: Backend, max_connections: int) -> None:
        self._backend = backend
        self._max_connections = max_connections
        self._rooms: dict[str, dict[str, Connection]] = {}
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
        return {room: list(members.values()) for room, members in self._rooms.items()}

    def admit(self) -> bool:
        """Count one more connection unless the cap is reached."""
        if self._connections >= self._max_connections:
            return False
        self._connections += 1
        return True

    def release(self) -> None:
        """Count one connection less."""
        self._connections -= 1

    async def add(self, connection: Connection) -> None:
        """Register the connection in its room, subscribing first if it is the room's first here."""
        async with self._lock:
            members = self._rooms.get(connection.room)
            if members is None:
                await self._backend.subscribe(connection.room)
                members = self._rooms[connection.room] = {}
            members[connection.member.id] = connection

    async def remove(self, connection: Connection) -> bool:
        """Unregister the connection; unsubscribe when the room has no local member left.

        Returns False when the connection was not registered (already removed, or never added).
        """
        async with self._lock:
            members = self._rooms.get(connection.room)
            if members is None or members.get(connection.member.id) is not connection:
                return False
            del members[connection.member.id]
            if not members:
                del self._rooms[connection.room]
                await self._backend.unsubscribe(connection.room)
            return True

    def deliver(self, event: Event) -> None:
        """Hand an event to every local member of its room without awaiting any of them."""
        members = self._rooms.get(event.room)
        if not members:
            return
        if isinstance(event, Message):
            for connection in members.values():
                connection.deliver(event)
            return
        if isinstance(event, Restart):
            for connection in members.values():
                connection.close(SERVICE_RESTART, "room restarted: reconnect to rejoin")
            return
        frame, wire = event.frame, event.wire
        for member_id, connection in members.items():
            if member_id != event.member.id:
                connection.send(frame, wire)
