"""The shared state of one chat app: settings, backend, registry, and the steps every entry point shares.

The endpoint, the HTTP routes and the lifespan all go through one ``Chat``; it starts lazily, so
the app also works mounted in a host that never runs the sub-app's lifespan.
"""

from __future__ import annotations

import logging

import anyio

from chat.backends import Backend, open_backend
from chat.connection import Connection
from chat.exceptions import Unavailable
from chat.protocol import JoinRequest, Member, Message, Signal, encode_welcome
from chat.rooms import RoomRegistry
from chat.settings import Settings

logger = logging.getLogger("chat")

GOING_AWAY = 1001


class Chat:
    """One per app: what every connection of the app shares."""

    def __init__(self, settings: Settings | None = None, backend: Backend | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.backend = backend or open_backend(self.settings)
        self.registry = RoomRegistry(self.backend, self.settings.max_connections)
        self._started = False
        self._start_lock = anyio.Lock()

    async def start(self) -> None:
        """Connect the backend once; later calls return at once."""
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.backend.start(self.registry.deliver)
                self._started = True

    async def stop(self) -> None:
        """Close every connection with 1001 and disconnect the backend."""
        for connections in self.registry.rooms().values():
            for connection in connections:
                connection.close(GOING_AWAY, "server shutting down")
        if self._started:
            self._started = False
            await self.backend.stop()

    async def join(self, connection: Connection, request: JoinRequest) -> None:
        """Register the member, announce it, and queue its welcome (history, members, seq, epoch)."""
        await self.start()
        await self.registry.add(connection)
        try:
            await self.backend.join(connection.room, connection.member)
            snapshot = await self.backend.snapshot(connection.room, request.since, request.epoch)
            members = await self.backend.members(connection.room)
        except Unavailable:
            await self.leave(connection)
            raise
        frame = encode_welcome(
            connection.room,
            connection.member,
            members,
            snapshot.seq,
            snapshot.epoch,
            snapshot.messages,
            snapshot.recovered,
        )
        connection.welcome(frame, snapshot.seq)

    async def leave(self, connection: Connection) -> None:
        """Unregister the member and announce it; safe to call more than once."""
        try:
            if await self.registry.remove(connection):
                await self.backend.leave(connection.room, connection.member)
        except Unavailable as exc:
            logger.warning("leave of %s from %s not announced: %s", connection.member.id, connection.room, exc.detail)

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        """Store and deliver a message; raises Unavailable when the backend cannot take it."""
        await self.start()
        return await self.backend.publish(room, sender, text)

    async def typing(self, room: str, member: Member) -> None:
        """Tell the room's other members that ``member`` is typing."""
        await self.backend.signal(Signal("typing", room, member))

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Whether the app can serve, and the figures ``/healthz`` shows."""
        try:
            await self.start()
            healthy = await self.backend.healthy()
        except Unavailable:
            healthy = False
        return healthy, {
            "status": "ok" if healthy else "degraded",
            "backend": self.backend.name,
            "connections": self.registry.connections,
            "rooms": self.registry.room_count,
        }
