"""How rooms travel over WebSockets: every room on one ``/ws`` connection (v1.1), or one ``/ws/{room}``
connection per room (v1). Both reconnect by themselves with backoff and jitter and rejoin each room from
where the application is; the room logic itself lives in ``state.py``, so this is I/O and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import ABNORMAL, BUSY, retry_delay
from .events import Frame
from .exceptions import ClientError, Refused

if TYPE_CHECKING:
    from .client import Room, Tasks

HELLO_TIMEOUT = 10.0
"""Seconds a new ``/ws`` connection may take to say hello before it is given up."""
POLICY = 1008
REFUSED_STATUSES = frozenset({401, 403, 404})
"""Handshake answers that another try would get again."""
BUSY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Options:
    """Where and how to connect: the server's base address, who we are, and the socket's limits."""

    base: str
    name: str | None = None
    token: str | None = None
    max_size: int | None = 16 * 1024 * 1024
    """The largest message we take from the server (a welcome that recovers much history is large)."""
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    random: Callable[[], float] = field(default=random.random, repr=False)

    def url(self, path: str, query: Mapping[str, object]) -> str:
        params = {"name": self.name, "batch": 1, **query}
        return f"{self.base}{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"

    async def dial(self, path: str, query: Mapping[str, object] | None = None) -> ClientConnection:
        """Open a WebSocket to ``path``; ``Refused`` when the handshake was refused for good."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            return await ws_connect(
                self.url(path, query or {}),
                additional_headers=headers,
                proxy=None,
                max_size=self.max_size,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=self.close_timeout,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in REFUSED_STATUSES:
                code, detail = refusal_reason(exc.response.body)
                raise Refused(code, detail, status) from exc
            raise


def refusal_reason(body: bytes | bytearray | None) -> tuple[str, str]:
    """The code and detail of a refused handshake's JSON body (``{"code","detail"}``), when it has one."""
    try:
        error = json.loads(body or b"")
    except ValueError:
        error = None
    if isinstance(error, dict):
        return str(error.get("code") or "forbidden"), str(error.get("detail") or "")
    return "forbidden", bytes(body or b"").decode("utf-8", "replace")[:200]


def failure_code(exc: BaseException) -> int:
    """The close code a failed connection attempt counts as for the backoff."""
    if isinstance(exc, InvalidStatus) and exc.response.status_code in BUSY_STATUSES:
        return BUSY
    return ABNORMAL


def frames(data: str | bytes) -> Iterator[Frame]:
    """The frames of one WebSocket message (``batch=1`` packs several, one JSON object a line)."""
    if not isinstance(data, str):
        return
    for line in data.split("\n"):
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if isinstance(frame, dict):
            yield frame


class Link(ABC):
    """Carries rooms: connects, reconnects after a backoff, and stops when refused or closed."""

    def __init__(self, options: Options, tasks: Tasks) -> None:
        self.options = options
        self.tasks = tasks
        self.ws: ClientConnection | None = None
        self.closing = False
        self.refusal: Refused | None = None
        """Why the server refused us, once it did: the link does not connect again."""
        self.task: asyncio.Task[None] | None = None
        self.worked = False
        """A room was welcomed on the current connection."""
        self._write_lock = asyncio.Lock()

    @abstractmethod
    async def connect(self) -> ClientConnection:
        """Open the next connection (raises when it could not)."""

    @abstractmethod
    async def session(self, ws: ClientConnection) -> bool:
        """Serve one connection until it closes; False once there is no reason to reconnect."""

    @abstractmethod
    def refused(self, refusal: Refused) -> None:
        """The server refused the handshake: stop the rooms with ``refusal``."""

    @abstractmethod
    def rooms(self) -> list[Room]:
        """The rooms this link carries."""

    @abstractmethod
    def forget(self, room: Room) -> None:
        """``room`` stopped (removed, refused, left): it is not joined again."""

    async def remove(self, room: Room) -> None:
        """The application left ``room``."""
        await self.aclose()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` among the client's tasks (it ends with the client at the latest)."""
        self.tasks.create_task(work)

    async def run(self, ws: ClientConnection | None) -> None:
        """Serve ``ws`` (or connect), then reconnect each time it goes, until closed or refused."""
        try:
            await self._serve(ws)
        except Exception:
            for room in self.rooms():
                room.stop(ClientError("the connection failed"))
            raise

    async def _serve(self, ws: ClientConnection | None) -> None:
        attempt = 0
        while not self.closing:
            code = ABNORMAL
            if ws is None:
                try:
                    ws = await self.connect()
                except Refused as refusal:
                    self.refused(refusal)
                    return
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    code = failure_code(exc)
            if ws is not None:
                self.worked = False
                if not await self.session(ws):
                    return
                code = ws.close_code or ABNORMAL
                if self.worked:
                    attempt = 0  # a room was welcomed: the connection worked, the backoff starts over
                ws = None
            if self.closing:
                return
            await asyncio.sleep(retry_delay(attempt, code, self.options.random))
            attempt += 1

    async def write(self, frames: list[dict[str, Any]]) -> bool:
        """Send frames in order; False when there is no connection to send them on."""
        async with self._write_lock:
            ws = self.ws
            if ws is None:
                return False
            try:
                for frame in frames:
                    await ws.send(json.dumps(self.outgoing(frame), separators=(",", ":")))
            except ConnectionClosed:
                return False
            return True

    def outgoing(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A frame as this protocol version sends it."""
        return frame

    async def aclose(self) -> None:
        """Stop reconnecting, end the task and close the connection (1000)."""
        self.closing = True
        ws = self.ws
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if ws is not None:
            await ws.close()


class MultiRoomLink(Link):
    """Every room on one ``/ws`` connection (protocol v1.1): hello, then a ``join`` per room."""

    def __init__(self, options: Options, tasks: Tasks) -> None:
        super().__init__(options, tasks)
        self.by_name: dict[str, Room] = {}
        self.live = False

    def rooms(self) -> list[Room]:
        return list(self.by_name.values())

    def forget(self, room: Room) -> None:
        if self.by_name.get(room.name) is room:
            del self.by_name[room.name]

    async def connect(self) -> ClientConnection:
        return await self.options.dial("/ws")

    async def add(self, room: Room) -> None:
        """Carry ``room``: it joins now if the connection is live, else once it is (``Refused`` if the server
        refused the connection for good)."""
        if self.refusal is not None:
            raise self.refusal
        self.by_name[room.name] = room
        if self.live:
            await self.join(room)

    async def remove(self, room: Room) -> None:
        """Stop carrying ``room``, telling the server when it holds us there."""
        self.forget(room)
        if self.live and room.state.joined:
            await self.write([{"type": "leave", "room": room.name, "ref": None}])

    async def join(self, room: Room) -> None:
        room.state.disconnected()
        await self.write([room.state.join_frame()])

    def refused(self, refusal: Refused) -> None:
        self.refusal = refusal
        for room in self.rooms():
            room.stop(refusal)

    async def session(self, ws: ClientConnection) -> bool:
        self.ws = ws
        greeted = False
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                while not greeted:
                    for frame in frames(await ws.recv()):
                        greeted = greeted or frame.get("type") == "hello"
            self.live = True
            for room in self.rooms():
                await self.join(room)
            async for data in ws:
                for frame in frames(data):
                    await self.route(frame)
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            self.ws = None
            self.live = False
            for room in self.rooms():
                room.disconnected()
            if ws.close_code is None:
                await ws.close()
        if ws.close_code == POLICY and not greeted:
            self.refused(Refused("forbidden", ws.close_reason or "the server refused the connection"))
            return False
        return True  # with no room left too: a room joined later needs the connection

    async def route(self, frame: Frame) -> None:
        """A frame to the room it names (or, naming none, whose request it answers)."""
        name = frame.get("room")
        room = self.by_name.get(name) if isinstance(name, str) else None
        if room is None and frame.get("ref") is not None:
            room = next((r for r in self.rooms() if r.asked(frame["ref"])), None)
        if room is not None:
            await room.receive(frame)


class SingleRoomLink(Link):
    """One room on a ``/ws/{room}`` connection of its own (protocol v1): the welcome comes first."""

    def __init__(self, options: Options, tasks: Tasks, room: Room) -> None:
        super().__init__(options, tasks)
        self.room = room

    def rooms(self) -> list[Room]:
        return [] if self.room.stopped else [self.room]

    async def connect(self) -> ClientConnection:
        return await self.options.dial(f"/ws/{quote(self.room.name)}", self.room.state.resume())

    def forget(self, room: Room) -> None:
        """Nothing to do: ``rooms()`` leaves out a stopped room, and the session ends with it."""

    def outgoing(self, frame: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in frame.items() if key != "room"}

    def refused(self, refusal: Refused) -> None:
        self.room.stop(refusal)

    async def session(self, ws: ClientConnection) -> bool:
        self.ws = ws
        try:
            async for data in ws:
                for frame in frames(data):
                    await self.room.receive({**frame, "room": self.room.name})
        except ConnectionClosed:
            pass
        finally:
            self.ws = None
            self.room.disconnected()
            if ws.close_code is None:
                await ws.close()
        if ws.close_code == POLICY:
            if ws.close_reason == "removed":
                await self.room.receive({"type": "left", "room": self.room.name, "ref": None, "reason": "removed"})
            elif not self.room.welcomes:
                self.refused(Refused("forbidden", ws.close_reason or "the server refused the connection"))
        return not self.room.stopped
