"""The backend interface: where messages get their sequence numbers, history and presence live.

A backend publishes to every process serving a room; each process's registry hands what arrives
to its local members through the ``deliver`` callback given to ``start``. Backends are picked by
URL scheme and imported lazily, so the Redis client is needed only for ``redis://``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from chat.protocol import Event, Member, Message, Signal
from chat.settings import Settings

if TYPE_CHECKING:
    from chat.stores.base import Store

Deliver = Callable[[Event], None]
PublishDone = Callable[["asyncio.Future[Message]"], None]
"""Called with a publish's future once it is resolved (``Backend.start_publish``)."""
StateListener = Callable[[bool], None]


@dataclass(frozen=True)
class Snapshot:
    """A room as a joining member first sees it: latest seq, epoch, and the history to show."""

    seq: int
    epoch: str
    messages: list[Message] = field(default_factory=list)
    recovered: bool = False


@dataclass(frozen=True)
class RoomSummary:
    """A room as the operator's listing shows it."""

    room: str
    members: int


class Backend(abc.ABC):
    """One per process. Every coroutine may raise ``Unavailable`` when the backend cannot serve."""

    name: ClassVar[str]

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.on_state: StateListener | None = None

    def state_changed(self, up: bool) -> None:
        """Tell the listener (the app's logs and metrics) that the backend went up or down."""
        if self.on_state is not None:
            self.on_state(up)

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect; from now on hand every event of a subscribed room to ``deliver``, in seq order."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect and stop every background task."""

    @abc.abstractmethod
    async def subscribe(self, room: str) -> None:
        """Start receiving the room's events (called for the room's first local member)."""

    @abc.abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's events (called when its last local member left)."""

    @abc.abstractmethod
    async def publish(self, room: str, sender: Member, text: str) -> Message:
        """Give the message the room's next seq, store it in history and deliver it everywhere."""

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        """Publish without waiting: the future gets the message (or ``Unavailable``).

        Messages started one after the other get their seqs in that order, so a member may have
        several on their way at once. ``done``, if given, is called once with the future when it is
        resolved (or was cancelled): backends call it as soon as they resolve it, in the same
        callback, a loop turn before a done callback of the future would run. This default runs
        ``publish`` in a task, which keeps the order only if ``publish`` fixes it before its first
        await, and makes ``done`` a done callback; backends override it.
        """
        future = asyncio.ensure_future(self.publish(room, sender, text))
        if done is not None:
            future.add_done_callback(done)
        return future

    def record_in(self, store: Store) -> None:
        """From now on ``store`` records this backend's rooms (``StoredBackend``): read positions from it.

        Called before ``start``. A backend that fills gaps or learns a room's position from its own
        history (Redis) reads them from the store instead; the memory backend needs nothing.
        """
        return None

    def relay(self, message: Message, epoch: str) -> None:
        """Deliver a message the store committed to every process serving its room, without waiting.

        Messages relayed one after the other reach every process in that order; a process that
        misses one reads it from the store before anything newer.
        """
        raise NotImplementedError(f"the {self.name} backend cannot relay a store's messages")

    @abc.abstractmethod
    async def signal(self, signal: Signal) -> None:
        """Deliver a passing event (typing) everywhere without storing it."""

    @abc.abstractmethod
    async def join(self, room: str, member: Member) -> None:
        """Add the member to the room's presence and tell the other members."""

    async def enter(self, room: str, member: Member, announce: bool, since: int | None, epoch: str | None) -> Snapshot:
        """``join`` (when ``announce``: the member's first connection in the room here), then ``snapshot``.

        A backend may do both in one round trip.
        """
        if announce:
            await self.join(room, member)
        return await self.snapshot(room, since, epoch)

    @abc.abstractmethod
    async def leave(self, room: str, member: Member) -> None:
        """Remove the member from the room's presence and tell the other members."""

    @abc.abstractmethod
    async def members(self, room: str) -> list[Member]:
        """Everyone present in the room, on every process."""

    @abc.abstractmethod
    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        """The room for a joining member: everything after ``since`` when it can, else the latest."""

    @abc.abstractmethod
    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq below ``before`` (or the latest), oldest first."""

    @abc.abstractmethod
    async def remove(self, room: str, member_id: str) -> None:
        """Deliver a ``Remove`` everywhere: every process closes the member's connections in the room."""

    @abc.abstractmethod
    async def rooms(self) -> list[RoomSummary]:
        """Every room the backend keeps (with members, or with history not yet expired), cluster-wide."""

    @abc.abstractmethod
    async def exists(self, room: str) -> bool:
        """Whether the backend keeps anything of the room."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """Whether the backend can serve right now."""
