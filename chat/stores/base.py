"""The store interface: where messages are recorded (each room's seqs and history), durably.

A backend carries frames between processes (fan-out, presence, typing); ``memory://`` and
``redis://`` also keep a bounded history of their own. A store is the record instead: the seqs and
history of every room come from it, and the backend only relays what it committed
(``chat.backends.stored.StoredBackend`` puts the two together).

A store's epochs come from the database: one secret made when the schema is created, from which
each room's epoch is derived (``room_epoch``). They change only if the database is replaced, so a
room needs no row until its first message, a member's ``since``/``epoch`` stays valid across
restarts, and one room's position never passes for another's.

Stores are picked by URL scheme and imported lazily (``chat.stores.open_store``).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from chat.backends.base import PublishDone, Snapshot
from chat.exceptions import Unavailable
from chat.logs import redact_url
from chat.protocol import Member, Message
from chat.settings import Settings

logger = logging.getLogger("chat.store")

UNAVAILABLE = "store unavailable"

Committed = Callable[[Message, str], None]
"""Called with each committed message and the store's epoch, in commit order (a room's in seq order)."""

SCHEMA_VERSION = 1
"""The layout this release writes; a database with a higher version was written by a newer release."""


@dataclass(slots=True)
class Append:
    """An append on its way: the message without its seq, the future its caller awaits, and its ``done``."""

    room: str
    sender: Member
    text: str
    ts: int
    future: asyncio.Future[Message]
    done: PublishDone | None

    def settle(self, outcome: Message | Unavailable) -> None:
        """Resolve the future with the message or the error (unless its caller cancelled it), then call ``done``."""
        future = self.future
        if not future.done():
            if isinstance(outcome, Message):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)
        if self.done is not None:
            try:
                self.done(future)
            except Exception:
                logger.exception("an append's done callback failed")


@functools.lru_cache(maxsize=4096)  # asked for every committed message: hash a busy room once
def room_epoch(database_epoch: str, room: str) -> str:
    """The epoch of ``room`` in a database whose epoch is ``database_epoch``: stable, and different per room."""
    digest = hashlib.blake2b(room.encode(), digest_size=9, key=database_epoch.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


class Store(abc.ABC):
    """One per process. Every coroutine may raise ``Unavailable`` when the store cannot serve."""

    name: ClassVar[str]

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings

    @property
    def location(self) -> str:
        """Where the messages are, for the start-up log: the URL without its password."""
        return redact_url(self.url)

    @abc.abstractmethod
    async def start(self, committed: Committed) -> None:
        """Open the store (create or check its schema), then call ``committed`` for every message committed.

        Raises ``ConfigError`` with one clear line when the store cannot be used at all (a bad URL,
        an unwritable path, a corrupt file, a schema from a newer release, a file another process holds).
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Commit or fail whatever is on its way (nobody waits forever), then close."""

    @abc.abstractmethod
    def append(self, room: str, sender: Member, text: str, done: PublishDone | None = None) -> asyncio.Future[Message]:
        """Record a message without waiting: the future gets it, with its seq, once it is committed.

        Messages appended one after the other get consecutive seqs of their room in that order; a
        message whose commit fails gets ``Unavailable`` and uses no seq (seqs stay gap-free).
        ``committed`` runs for the message, then ``done`` (if given) with the future, in the same
        callback; nothing is delivered or acknowledged before the commit.
        """

    @abc.abstractmethod
    async def snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        """The room for a joining member: everything after ``since`` when it is kept and the epoch matches
        (``recovered``), else its latest ``count`` messages; oldest first."""

    @abc.abstractmethod
    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq below ``before`` (or the latest), oldest first, by index."""

    @abc.abstractmethod
    async def rooms(self) -> list[str]:
        """Every room with a recorded message, sorted (SQLite also lists a room whose messages retention deleted)."""

    @abc.abstractmethod
    async def exists(self, room: str) -> bool:
        """Whether the room has a recorded message (SQLite: ever had one)."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """Whether the store can record right now."""
