"""A backend whose messages a store records: the store gives seqs, epoch and history, the backend carries frames.

``memory://`` and ``redis://`` keep a bounded history of their own; with ``store`` naming SQLite or
PostgreSQL, every message is committed to the store first, and only then relayed to the members
and acknowledged to its sender (``Store.append``), so an acknowledged message survives a restart.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.protocol import Member, Message, Signal
from chat.stores.base import Store

MAX_SEQ = 2**63 - 1
"""The largest seq a store can hold (a signed 64-bit integer); ``before`` may be any integer, however large."""


class StoredBackend(Backend):
    """Fan-out, presence and typing through ``relay``; seqs, epoch and history from ``store``."""

    name: ClassVar[str] = "stored"

    def __init__(self, relay: Backend, store: Store) -> None:
        super().__init__(relay.url, relay.settings)
        self.relay_backend = relay
        self.store = store
        relay.on_state = self.state_changed
        relay.record_in(store)

    async def start(self, deliver: Deliver) -> None:
        await self.store.start(self.relay_backend.relay)
        try:
            await self.relay_backend.start(deliver)
        except BaseException:
            await self.store.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.store.stop()  # what it still commits is relayed on the way
        finally:
            await self.relay_backend.stop()

    # --- where messages are recorded: the store ----------------------------------------------

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        return await self.store.append(room, sender, text)

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        return self.store.append(room, sender, text, done)

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        return await self.store.snapshot(room, since, epoch, self.settings.history_on_join)

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        return await self.store.history(room, None if before is None else min(before, MAX_SEQ), limit)

    async def rooms(self) -> list[RoomSummary]:
        present = {summary.room: summary.members for summary in await self.relay_backend.rooms() if summary.members}
        recorded = await self.store.rooms()
        names = sorted(present.keys() | set(recorded))
        return [RoomSummary(room, present.get(room, 0)) for room in names]

    async def exists(self, room: str) -> bool:
        return await self.store.exists(room) or bool(await self.relay_backend.members(room))

    async def healthy(self) -> bool:
        return await self.store.healthy() and await self.relay_backend.healthy()

    # --- how frames reach other processes: the relay -----------------------------------------

    async def subscribe(self, room: str) -> None:
        await self.relay_backend.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        await self.relay_backend.unsubscribe(room)

    async def signal(self, signal: Signal) -> None:
        await self.relay_backend.signal(signal)

    async def join(self, room: str, member: Member) -> None:
        await self.relay_backend.join(room, member)

    async def leave(self, room: str, member: Member) -> None:
        await self.relay_backend.leave(room, member)

    async def members(self, room: str) -> list[Member]:
        return await self.relay_backend.members(room)

    async def remove(self, room: str, member_id: str) -> None:
        await self.relay_backend.remove(room, member_id)
