"""The client's I/O: ``connect()`` gives a ``Client``; ``client.join(room)`` a ``Room`` to send to, ask history
of and iterate. The decisions are ``state.py``'s and ``backoff.py``'s; the sockets are ``links.py``'s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

from .backoff import ABNORMAL, BUSY, retry_delay
from .events import Frame, Member, Message, RoomEvent
from .exceptions import ClientError, Refused, RoomClosed, ServerError
from .links import Link, MultiRoomLink, Options, SingleRoomLink
from .state import Outcome, RoomState, next_ref
from .stream import EventStream

ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HISTORY_LIMIT = 100
"""The most messages one history request may ask for."""


class Room:
    """A joined room: ``send()``, ``history()``, ``typing()``, ``leave()``, and ``async for event in room``.

    Its state is readable at any time: ``members`` (id -> Member), ``me``, ``live`` (joined on the current
    connection), ``recovered`` (whether the last rejoin missed nothing; None before any), ``epoch``, ``last_seq``.
    """

    def __init__(self, name: str, *, max_outbox: int, max_events: int, on_stop: Callable[[Room], None]) -> None:
        self.name = name
        self.state = RoomState(name, max_outbox)
        self.link: Link | None = None
        self.welcomes = 0
        """How many welcomes came: 1 after the join, one more per rejoin."""
        self.stopped = False
        self._events = EventStream(max_events)
        self._sends: dict[str, asyncio.Future[int]] = {}
        self._histories: dict[str, tuple[dict[str, Any], asyncio.Future[list[Message]]]] = {}
        self._joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._join_attempts = 0
        self._retry: asyncio.TimerHandle | None = None
        self._resend: asyncio.TimerHandle | None = None
        self._resend_attempts = 0
        self._stop_error: ClientError = RoomClosed(f"room {name} is closed")
        self._on_stop = on_stop

    def __repr__(self) -> str:
        return f"<Room {self.name} live={self.live} last_seq={self.state.last_seq}>"

    # --- what the application reads --------------------------------------------------------------

    @property
    def members(self) -> Mapping[str, Member]:
        return MappingProxyType(self.state.members)

    @property
    def me(self) -> Member | None:
        return self.state.me

    @property
    def live(self) -> bool:
        return self.state.joined and not self.stopped

    @property
    def recovered(self) -> bool | None:
        return self.state.recovered

    @property
    def epoch(self) -> str | None:
        return self.state.epoch

    @property
    def last_seq(self) -> int:
        return self.state.last_seq

    def __aiter__(self) -> AsyncIterator[RoomEvent]:
        return self

    async def __anext__(self) -> RoomEvent:
        """The next event; the iteration ends when the room is left, removed or its client closes, and raises
        ``Refused`` when the server refused it."""
        return await self._events.get()

    # --- what the application does ---------------------------------------------------------------

    async def send(self, text: str) -> int:
        """Say ``text``; returns its seq once the server acknowledged it. While disconnected it waits in the
        outbox and goes out after the rejoin; refused as ``rate_limited`` it waits there too, and goes out again
        after a pause. Raises ``OutboxFull``, ``MessageTooLarge``, ``ServerError`` (refused: ``too_large``...)
        or ``RoomClosed``."""
        if self.stopped:
            raise self._stop_error
        pending, frame = self.state.queue(text)
        future = self._future(self._sends, pending.ref)
        try:
            if frame is not None:
                await self._write([frame])
            return await future
        finally:
            self._sends.pop(pending.ref, None)
            future.cancel()  # a send cancelled while writing: nobody will wait for its outcome

    async def history(self, before: int | None = None, limit: int = 50) -> list[Message]:
        """Up to ``limit`` (1-100) messages with seq below ``before`` (default: the latest), oldest first."""
        if self.stopped:
            raise self._stop_error
        if not 1 <= limit <= HISTORY_LIMIT:
            raise ValueError(f"limit must be 1-{HISTORY_LIMIT}")
        ref = next_ref("h")
        frame: dict[str, Any] = {"type": "history", "room": self.name, "limit": limit, "ref": ref}
        if before is not None:
            frame["before"] = before
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._histories[ref] = (frame, future)
        try:
            if self.live:
                await self._write([frame])  # else it goes out after the rejoin
            return await future
        finally:
            self._histories.pop(ref, None)
            future.cancel()

    async def typing(self) -> None:
        """Tell the others we are typing (call it at most every 2 s); nothing while disconnected."""
        if self.live:
            await self._write([{"type": "typing", "room": self.name}])

    async def leave(self) -> None:
        """Leave the room: the iteration ends, messages still waiting fail with ``RoomClosed``."""
        if self.stopped:
            return
        self.stop()
        if self.link is not None:
            await self.link.remove(self)

    # --- what the link tells it ------------------------------------------------------------------

    async def joined(self) -> None:
        """Wait for the first welcome (raises ``Refused`` when the join was refused)."""
        await self._joined

    def asked(self, ref: object) -> bool:
        """Whether ``ref`` names a request of this room still waiting for its answer."""
        return ref in self._sends or ref in self._histories or ref == self.state.join_ref

    def disconnected(self) -> None:
        """The connection went: no longer joined; the next one rejoins."""
        self.state.disconnected()
        self._cancel_retry()

    async def receive(self, frame: Frame) -> None:
        """A frame about this room: settle what it answers, hand its events over, do what it asks for."""
        if self.stopped:
            return
        ref = frame.get("ref")
        kind = frame.get("type")
        if ref is not None and ref in self._histories and kind in ("history", "error"):
            self._answer_history(ref, frame)
            return
        out = self.state.receive(frame)
        if out.acked:
            self._resend_attempts = 0
        for ref, seq in out.acked:
            self._settle(self._sends, ref, seq)
        for ref, error in out.failed:
            self._settle(self._sends, ref, error)
        if kind == "welcome":
            self._welcomed(out)
        if out.send:
            await self._write(out.send)
        for event in out.events:
            await self._events.put(event)
        await self._act(out)

    def _welcomed(self, out: Outcome) -> None:
        self.welcomes += 1
        if self.link is not None:
            self.link.worked = True
        self._join_attempts = 0
        out.send.extend(frame for frame, _ in self._histories.values())  # asked while away
        if not self._joined.done():
            self._joined.set_result(None)

    async def _act(self, out: Outcome) -> None:
        if out.resend_later and self._resend is None:
            delay = retry_delay(self._resend_attempts, ABNORMAL)
            self._resend_attempts += 1
            self._resend = asyncio.get_running_loop().call_later(delay, self._send_again)
        if out.action == "rejoin" and isinstance(self.link, MultiRoomLink):
            await self.link.join(self)
        elif out.action == "retry_join":
            delay = retry_delay(self._join_attempts, BUSY)
            self._join_attempts += 1
            self._cancel_retry()
            self._retry = asyncio.get_running_loop().call_later(delay, self._join_again)
        elif out.action == "removed":
            self.stop()
        elif out.action == "refused":
            self.stop(out.refusal)

    def _send_again(self) -> None:
        self._resend = None
        if self.live and self.link is not None:
            self.link.spawn(self._flush())

    async def _flush(self) -> None:
        await self._write(self.state.flush())  # taken when it can go out, so later sends stay behind it

    def _join_again(self) -> None:
        self._retry = None
        if isinstance(self.link, MultiRoomLink) and self.link.live and not self.stopped and not self.state.joined:
            self.link.spawn(self.link.join(self))

    def stop(self, error: ClientError | None = None) -> None:
        """No more of this room: fail what waits (with ``error`` if refused), end the iteration, forget it."""
        if self.stopped:
            return
        self.stopped = True
        self._cancel_retry()
        if error is not None:
            self._stop_error = error
        for ref, failure in self.state.close(self._stop_error):
            self._settle(self._sends, ref, failure)
        for ref in list(self._histories):
            self._settle_history(ref, self._stop_error)
        if not self._joined.done():
            self._joined.set_exception(self._stop_error)
            self._joined.exception()  # retrieved: a join given up before it waited must not warn
        self._events.close(error)
        if self.link is not None:
            self.link.forget(self)
        self._on_stop(self)

    # --- helpers ---------------------------------------------------------------------------------

    async def _write(self, frames: list[dict[str, Any]]) -> None:
        if self.link is not None:
            await self.link.write(frames)

    def _cancel_retry(self) -> None:
        for handle in (self._retry, self._resend):
            if handle is not None:
                handle.cancel()
        self._retry = self._resend = None

    def _answer_history(self, ref: str, frame: Frame) -> None:
        if frame.get("type") == "error":
            self._settle_history(ref, ServerError(str(frame.get("code")), str(frame.get("detail") or "")))
            return
        items = frame.get("messages")
        messages = [Message.parse(self.name, item) for item in items] if isinstance(items, list) else []
        self._settle_history(ref, [m for m in messages if m is not None])

    def _settle_history(self, ref: str, result: list[Message] | ClientError) -> None:
        entry = self._histories.pop(ref, None)
        if entry is not None:
            _settle(entry[1], result)

    @staticmethod
    def _future(futures: dict[str, asyncio.Future[int]], ref: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        futures[ref] = future
        return future

    @staticmethod
    def _settle(futures: dict[str, asyncio.Future[int]], ref: str, result: int | ClientError) -> None:
        future = futures.pop(ref, None)
        if future is not None:
            _settle(future, result)


def _settle(future: asyncio.Future[Any], result: object) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Client:
    """A connection to one chat server, for any number of rooms; made by ``connect()``.

    ``multiroom``: True for one ``/ws`` connection for every room (protocol v1.1), False for a ``/ws/{room}``
    connection per room (v1), None to use ``/ws`` where the server offers it (its handshake is not refused).
    """

    def __init__(
        self,
        options: Options,
        tasks: Tasks,
        *,
        multiroom: bool | None = None,
        max_outbox: int = 1000,
        max_events: int = 10000,
    ) -> None:
        self.options = options
        self.multiroom = multiroom
        self.max_outbox = max_outbox
        self.max_events = max_events
        self._tasks = tasks
        self._rooms: dict[str, Room] = {}
        self._shared: MultiRoomLink | None = None
        self._links: list[Link] = []
        self._closed = False

    @property
    def rooms(self) -> Mapping[str, Room]:
        """The rooms joined, by name."""
        return MappingProxyType(self._rooms)

    async def start(self) -> None:
        """Open ``/ws`` unless told to use v1; in auto mode a refused ``/ws`` means v1."""
        if self.multiroom is False:
            return
        try:
            ws = await self.options.dial("/ws")
        except Refused as refusal:
            if self.multiroom is None and refusal.status in (403, 404):
                self.multiroom = False
                return
            raise
        self.multiroom = True
        self._shared = MultiRoomLink(self.options, self._tasks)
        self._start(self._shared, ws)

    async def join(self, name: str) -> Room:
        """Join room ``name`` and wait for its welcome (the room already joined, if it is).

        Raises ``Refused`` when the server refuses it, ``ValueError`` for an invalid name, and (on a v1 server)
        ``OSError`` or a ``websockets`` error when the first connection fails.
        """
        if self._closed:
            raise RoomClosed("the client is closed")
        if not ROOM_PATTERN.fullmatch(name):
            raise ValueError(f"invalid room name: {name!r}")
        if name in self._rooms:
            return self._rooms[name]
        room = Room(name, max_outbox=self.max_outbox, max_events=self.max_events, on_stop=self._forget)
        self._rooms[name] = room
        try:
            if self._shared is not None:
                room.link = self._shared
                await self._shared.add(room)
            else:
                link = SingleRoomLink(self.options, self._tasks, room)
                room.link = link
                self._links.append(link)
                self._start(link, await link.connect())
            await room.joined()
        except BaseException:
            await room.leave()
            raise
        return room

    async def aclose(self) -> None:
        """Leave every room (their iterations end) and close every connection."""
        if self._closed:
            return
        self._closed = True
        for room in list(self._rooms.values()):
            room.stop()
        for link in [*self._links, *filter(None, [self._shared])]:
            await link.aclose()

    def _start(self, link: Link, ws: Any) -> None:
        link.task = self._tasks.create_task(link.run(ws))

    def _forget(self, room: Room) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]


class Tasks:
    """The client's background tasks: each ends with the client, and the first to fail is raised at its close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    def create_task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None and self.failure is None:
            self.failure = failure

    async def aclose(self) -> None:
        """Cancel every task still running and wait for them all."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def base_url(url: str) -> str:
    """The server's base WebSocket address: ``http(s)`` becomes ``ws(s)``, no trailing slash."""
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            url = secure + url[len(plain) :]
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"not a ws://, wss://, http:// or https:// address: {url!r}")
    return url.rstrip("/")


@asynccontextmanager
async def connect(
    url: str,
    *,
    name: str | None = None,
    token: str | None = None,
    multiroom: bool | None = None,
    max_outbox: int = 1000,
    max_events: int = 10000,
    max_size: int | None = 16 * 1024 * 1024,
) -> AsyncIterator[Client]:
    """Connect to the chat server at ``url`` (its base address, with the prefix it is mounted at).

    ``name`` is the display name (the server picks one if None; with auth on, the ``token`` names us),
    ``multiroom`` picks the protocol (None: v1.1 where offered), ``max_outbox`` bounds the messages waiting
    to be sent per room, ``max_events`` the events buffered per room for the application to read.
    On exit every room is left and every connection closed.
    """
    options = Options(base_url(url), name, token, max_size=max_size)
    tasks = Tasks()
    client = Client(options, tasks, multiroom=multiroom, max_outbox=max_outbox, max_events=max_events)
    try:
        await client.start()
        yield client
    finally:
        await client.aclose()
        await tasks.aclose()
    if tasks.failure is not None:
        raise ClientError("the client failed in the background") from tasks.failure
