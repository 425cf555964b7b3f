"""A store in memory, for tests of what a store's backend does: ``Database`` stands for the database,
``MemoryStore`` for one process's store on it (give two processes one database)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import ClassVar

from chat.backends.base import PublishDone, Snapshot
from chat.exceptions import Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings
from chat.stores.base import Committed, Store


class Database:
    """Every room's messages, kept forever, and the database's epoch."""

    def __init__(self) -> None:
        self.epoch = secrets.token_urlsafe(9)
        self.rooms: dict[str, list[Message]] = {}

    def commit(self, room: str, sender: Member, text: str) -> Message:
        """Give the message its room's next seq and keep it (a commit nobody relays, when called directly)."""
        messages = self.rooms.setdefault(room, [])
        message = Message(room, len(messages) + 1, sender, text, time.time_ns() // 1_000_000)
        messages.append(message)
        return message

    def replace(self) -> None:
        """Forget everything under a new epoch, as a database replaced by an empty one."""
        self.epoch = secrets.token_urlsafe(9)
        self.rooms = {}


class MemoryStore(Store):
    """Commits on the next loop turn, in append order: ``committed``, then ``done``, in the same callback."""

    name: ClassVar[str] = "memory-test"

    def __init__(self, database: Database, settings: Settings | None = None) -> None:
        super().__init__("memory-test://", settings or Settings())
        self.database = database
        self._committed: Committed | None = None

    async def start(self, committed: Committed) -> None:
        self._committed = committed

    async def stop(self) -> None:
        await asyncio.sleep(0)  # the commits already on their way run first
        self._committed = None

    def append(self, room: str, sender: Member, text: str, done: PublishDone | None = None) -> asyncio.Future[Message]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()

        def commit() -> None:
            if self._committed is None:
                future.set_exception(Unavailable("store stopped"))
            else:
                message = self.database.commit(room, sender, text)
                self._committed(message, self.database.epoch)
                if not future.done():
                    future.set_result(message)
            if done is not None:
                done(future)

        loop.call_soon(commit)
        return future

    async def snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        messages = self.database.rooms.get(room, [])
        seq, current = len(messages), self.database.epoch
        if since is not None and epoch == current and 0 <= since <= seq:
            return Snapshot(seq, current, messages[since:], recovered=True)
        return Snapshot(seq, current, messages[seq - count :] if count else [])

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        messages = self.database.rooms.get(room, [])
        end = len(messages) if before is None else max(0, min(len(messages), before - 1))
        return messages[max(0, end - limit) : end]

    async def rooms(self) -> list[str]:
        return sorted(room for room, messages in self.database.rooms.items() if messages)

    async def exists(self, room: str) -> bool:
        return bool(self.database.rooms.get(room))

    async def healthy(self) -> bool:
        return self._committed is not None
