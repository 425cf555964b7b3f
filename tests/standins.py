"""Stand-ins shared by the unit tests: recording senders and websockets, a gated backend, bounded waits,
TestClient helpers, and /metrics parsing (which the e2e tests share too)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlencode

import anyio
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response
from starlette.types import Scope
from starlette.websockets import WebSocketDisconnect

from chat.app import create_app
from chat.backends.base import Backend, Deliver, RoomSummary, Snapshot
from chat.chat import chat_of
from chat.connection import FrameBatch
from chat.protocol import Event, Member, Message, Signal
from chat.settings import Settings
from chat.testing import WAIT as WAIT  # the kit's bounded waits, shared
from chat.testing import Changes as Changes

if TYPE_CHECKING:  # importing starlette.testclient warns about httpx; only the app tests need it
    from starlette.testclient import TestClient, WebSocketTestSession

ROOM = "lobby"
"""The room the TestClient tests join unless they need another."""

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items in arrival order, read one by one with bounded waits (no stream to close)."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._read = 0
        self._arrived: anyio.Event | None = None

    def put(self, item: T) -> None:
        self.items.append(item)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def get(self) -> T:
        """The next item not read yet; fails the test if none comes within WAIT seconds."""
        with anyio.fail_after(WAIT):
            while self._read == len(self.items):
                self._arrived = anyio.Event()
                await self._arrived.wait()
        item = self.items[self._read]
        self._read += 1
        return item

    def unread(self) -> list[T]:
        """The items not read yet, marking them read, without waiting."""
        items = self.items[self._read :]
        self._read = len(self.items)
        return items


# --- what a socket did -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """A text frame the code under test sent."""

    text: str

    def json(self) -> dict[str, Any]:
        data = json.loads(self.text)
        assert isinstance(data, dict)
        return data


@dataclass(frozen=True)
class Closed:
    """A close the code under test asked for."""

    code: int
    reason: str | None


@dataclass(frozen=True)
class Accepted:
    """The handshake was accepted."""


@dataclass(frozen=True)
class Denied:
    """The handshake was refused with an HTTP response."""

    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


Action = Sent | Closed | Accepted | Denied


class Recorder:
    """Everything a stand-in socket was asked to do, in order, readable with bounded waits."""

    def __init__(self) -> None:
        self._inbox = Inbox[Action]()

    @property
    def actions(self) -> list[Action]:
        return self._inbox.items

    def record(self, action: Action) -> None:
        self._inbox.put(action)

    async def next(self) -> Action:
        """The next action not read yet; fails the test if none comes within WAIT seconds."""
        return await self._inbox.get()

    async def next_sent(self) -> dict[str, Any]:
        """The next action, which must be a text frame, decoded."""
        action = await self.next()
        assert isinstance(action, Sent), action
        return action.json()

    def pending(self) -> list[Action]:
        """The actions recorded and not read yet, without waiting."""
        return self._inbox.unread()

    @property
    def frames(self) -> list[str]:
        return [action.text for action in self.actions if isinstance(action, Sent)]

    @property
    def closes(self) -> list[Closed]:
        return [action for action in self.actions if isinstance(action, Closed)]


class RecordingSender:
    """A ``chat.connection.Sender`` that records what it sends.

    ``block`` makes ``send_text`` wait until ``release()`` (a peer that stopped reading); ``fail`` makes it raise.
    """

    def __init__(self, block: bool = False, fail: BaseException | None = None) -> None:
        self.recorder = Recorder()
        self.block = block
        self.fail = fail
        self.sending = anyio.Event()
        self._released = anyio.Event()

    async def send_text(self, data: str) -> None:
        self.sending.set()
        if self.fail is not None:
            raise self.fail
        if self.block:
            await self._released.wait()
        self.recorder.record(Sent(data))

    def release(self) -> None:
        """The peer reads again: blocked and later sends go through."""
        self.block = False
        self._released.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.recorder.record(Closed(code, reason))


class StandInWriter:
    """A direct writer that records frames and closes, and reports a settable buffer size."""

    def __init__(self) -> None:
        self.stall_timeout = 0.0
        self.batch = False
        self.write_delay = 0.0
        self.on_stall: Callable[[], None] | None = None
        self.recorder = Recorder()
        self.wires: list[bytes] = []
        self.buffered = 0

    def direct_write(self, frame: str, wire: bytes) -> None:
        self.recorder.record(Sent(frame))
        self.wires.append(wire)
        self.buffered += len(wire)

    def direct_write_many(self, frames: FrameBatch) -> None:
        for frame in frames.texts:
            self.recorder.record(Sent(frame))
        self.wires.append(frames.wire)
        self.buffered += len(frames.wire)

    def direct_buffered(self) -> int:
        return self.buffered

    def direct_close(self, code: int, reason: str) -> None:
        self.recorder.record(Closed(code, reason))


class StandInWebSocket(RecordingSender):
    """What ``ChatEndpoint``'s hooks use of a Starlette ``WebSocket``: scope (the query in its ``query_string``),
    params, accept/close/send."""

    def __init__(self, scope: Scope, room: str, query: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.scope = scope
        self.path_params = {"room": room}
        scope["query_string"] = urlencode(query or {}).encode()

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self.recorder.record(Accepted())

    async def send_denial_response(self, response: Response) -> None:
        self.recorder.record(Denied(response.status_code, bytes(response.body)))


# --- a backend whose subscribe and unsubscribe the test releases -------------------------------


@dataclass
class Gate:
    """A step that signals when it is entered and waits until the test opens it."""

    entered: anyio.Event = field(default_factory=anyio.Event)
    opened: anyio.Event = field(default_factory=anyio.Event)

    async def pass_through(self) -> None:
        self.entered.set()
        await self.opened.wait()

    def open(self) -> None:
        self.opened.set()


class GatedBackend(Backend):
    """A backend that only tracks subscriptions; subscribe/unsubscribe wait on gates while gates are set."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__("gated://", Settings(backend="gated://"))
        self.subscribed: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.subscribe_gate: Gate | None = None
        self.unsubscribe_gate: Gate | None = None
        self.present: list[Member] = []
        """What ``members`` answers for any room."""

    async def start(self, deliver: Deliver) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def subscribe(self, room: str) -> None:
        self.calls.append(("subscribe", room))
        if self.subscribe_gate is not None:
            await self.subscribe_gate.pass_through()
        self.subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self.calls.append(("unsubscribe", room))
        if self.unsubscribe_gate is not None:
            await self.unsubscribe_gate.pass_through()
        self.subscribed.discard(room)

    async def publish(self, room: str, sender: Member, text: str) -> Message:
        raise NotImplementedError

    async def signal(self, signal: Signal) -> None:
        raise NotImplementedError

    async def join(self, room: str, member: Member) -> None:
        raise NotImplementedError

    async def leave(self, room: str, member: Member) -> None:
        raise NotImplementedError

    async def members(self, room: str) -> list[Member]:
        return list(self.present)

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        raise NotImplementedError

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        raise NotImplementedError

    async def remove(self, room: str, member_id: str) -> None:
        raise NotImplementedError

    async def rooms(self) -> list[RoomSummary]:
        raise NotImplementedError

    async def exists(self, room: str) -> bool:
        raise NotImplementedError

    async def healthy(self) -> bool:
        return True


# --- backend events -----------------------------------------------------------------------------


class EventSink:
    """A ``deliver`` callback that keeps every event for bounded reads (backends may deliver later)."""

    def __init__(self) -> None:
        self._inbox = Inbox[Event]()

    @property
    def events(self) -> list[Event]:
        return self._inbox.items

    def __call__(self, event: Event) -> None:
        self._inbox.put(event)

    async def next(self) -> Event:
        """The next event not read yet; fails the test if none comes within WAIT seconds."""
        return await self._inbox.get()

    def pending(self) -> list[Event]:
        return self._inbox.unread()


class Delivered:
    """A backend's ``deliver`` (this object's ``deliver``) that keeps every event, with bounded waits on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changes = Changes()

    def deliver(self, event: Event) -> None:
        self.events.append(event)
        self._changes.changed()

    def seqs(self) -> list[int]:
        return [event.seq for event in self.events if isinstance(event, Message)]

    async def wait_until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        await self._changes.wait_until(condition, within)


# --- TestClient sessions with bounded waits -----------------------------------------------------


def receive(session: WebSocketTestSession, timeout: float = WAIT) -> dict[str, Any]:
    """The next server frame of a TestClient session, decoded; raises WebSocketDisconnect on a close.

    TestClient's own ``receive`` waits forever; this one fails the test after ``timeout`` seconds.
    """

    async def next_message() -> Any:
        with anyio.fail_after(timeout):
            return await session._send_rx.receive()

    message = session.portal.call(next_message)
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(code=message.get("code", 1000), reason=message.get("reason", ""))
    assert message["type"] == "websocket.send", message
    text = message.get("text")
    assert isinstance(text, str), message
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def receive_type(session: WebSocketTestSession, kind: str, timeout: float = WAIT) -> dict[str, Any]:
    """The next server frame, which must be of type ``kind``."""
    frame = receive(session, timeout)
    assert frame["type"] == kind, frame
    return frame


def barrier(session: WebSocketTestSession, ref: str = "barrier") -> None:
    """Ping and expect the pong as the very next frame: proves nothing else was queued before it."""
    session.send_json({"type": "ping", "ref": ref})
    assert receive(session) == {"type": "pong", "ref": ref}


def until(session: WebSocketTestSession, kind: str) -> list[dict[str, Any]]:
    """Frames up to and including the next one of type ``kind``."""
    frames = [receive(session)]
    while frames[-1]["type"] != kind:
        frames.append(receive(session))
    return frames


def drain(session: WebSocketTestSession) -> None:
    """Read frames until the server closes the socket (raises WebSocketDisconnect; each read is bounded)."""
    while True:
        receive(session)


def closed_with(session: WebSocketTestSession) -> WebSocketDisconnect:
    """Read until the server closes the socket; return the close."""
    try:
        drain(session)
    except WebSocketDisconnect as close:
        return close
    raise AssertionError("drain returns only by a close")  # pragma: no cover


def refused(client: TestClient, path: str = f"/ws/{ROOM}", headers: Mapping[str, str] | None = None) -> Any:
    """The denial response a handshake gets (raises AssertionError if it is accepted)."""
    from starlette.testclient import WebSocketDenialResponse

    try:
        with client.websocket_connect(path, headers=dict(headers or {})):
            pass
    except WebSocketDenialResponse as response:
        return response
    raise AssertionError(f"the handshake to {path} was accepted")


@contextmanager
def serve(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on a fresh app, with its lifespan running (one event loop for every socket)."""
    from starlette.testclient import TestClient

    with TestClient(create_app(settings)) as client:
        yield client


@contextmanager
def joined(
    client: TestClient, path: str = f"/ws/{ROOM}", headers: Mapping[str, str] | None = None
) -> Iterator[tuple[WebSocketTestSession, dict[str, Any]]]:
    """A socket connected to ``path`` and its welcome frame."""
    with client.websocket_connect(path, headers=dict(headers or {})) as session:
        yield session, receive_type(session, "welcome")


def link_up(client: TestClient) -> None:
    """Return once the backend serves subscriptions (Redis connects its pub/sub link after startup)."""
    assert client.portal is not None
    backend = chat_of({"app": client.app}).backend
    client.portal.call(backend.subscribe, "link-check")
    client.portal.call(backend.unsubscribe, "link-check")


# --- /metrics -----------------------------------------------------------------------------------

Samples = dict[str, float]
"""The samples of a /metrics page: ``name`` or ``name{label="value",...}`` (labels sorted) -> value."""


def samples_of(text: str) -> Samples:
    """Every sample of a Prometheus text page, keyed as ``Samples`` says."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
