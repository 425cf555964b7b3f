"""Test a chat app, and the host's hooks, without a server: members in memory, talking to the real endpoints.

```python
async with chat.testing.room_member("lobby", name="ann") as ann:
    await ann.send({"type": "message", "text": "hi"})
    assert (await ann.receive())["text"] == "hi"
```

``ChatTest`` runs an app (``create_app(settings, hooks=hooks)``, or one given) as a server would: it
runs the app's lifespan, owns a task group, and on exit disconnects every member still connected,
stops the app and leaves no task behind. ``ChatTest.member(room)`` connects one member (v1, ``/ws/{room}``;
``room=None``: v1.1, ``/ws``) and hands back a ``Member``, the test's end of the socket.

Each member is one ASGI websocket connection, in memory: the app is called with a websocket scope
and the endpoint's own ``dispatch`` runs its receive loop (``on_connect``, ``on_receive``,
``on_disconnect``), as under uvicorn. Going through the app rather than calling the hooks with a
hand-built object means the host's hooks get a real ``starlette.websockets.WebSocket``:
``websocket.session``, ``.cookies``, ``.headers``, ``.query_params`` and ``.path_params`` are
what a server would give them, and the routing, the handshake's HTTP denial and the closing
handshake are the real ones. For a ``create_app`` app the kit makes the endpoint itself, as
``ChatApp`` does, so that ``Member.endpoint`` shows its state to a test of the chat's internals.

Two delivery paths, as in production (``chat.connection``): ``delivery="direct"`` offers the
``chat.direct`` ASGI extension with a ``RecordingWriter`` (what ``scripts/serve`` does: frames
written synchronously), ``delivery="queued"`` offers nothing, so the endpoint starts its writer
task, which sends frame by frame (any other ASGI server).

Every wait is bounded (``timeout``, 5 seconds unless given): a frame that does not come raises
``NothingReceived`` listing the frames that did. ``Member.send`` returns once the endpoint has
handled the frame (it asks for the next one), so a test needs no sleep. No pytest inside: it runs
under pytest's anyio plugin or ``anyio.run``, on asyncio (the chat's event loop).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import count
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack
from urllib.parse import urlencode

import anyio
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Scope
from starlette.websockets import WebSocketDisconnect

from chat.app import ChatApp, create_app
from chat.chat import Chat
from chat.connection import DIRECT_EXTENSION, FrameBatch
from chat.endpoint import DENIAL_EXTENSION, SocketEndpoint
from chat.settings import Settings

__all__ = [
    "WAIT",
    "Changes",
    "ChatTest",
    "Closed",
    "Delivery",
    "Handshake",
    "Member",
    "NothingReceived",
    "RecordingWriter",
    "Refused",
    "room_member",
]

WAIT = 5.0
"""The most a test waits, in seconds, for something that should happen at once."""

Delivery = Literal["direct", "queued"]
"""How frames reach a member's socket: the ``chat.direct`` extension (``scripts/serve``), or a writer task."""


class Handshake(TypedDict, total=False):
    """What a member's handshake carries, as a host's ``authenticate`` hook reads it from the ``WebSocket``."""

    name: str
    """The ``name`` query parameter."""
    query: Mapping[str, str]
    """More query parameters (``websocket.query_params``): ``token``, ``since``, ``batch``..."""
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    session: Mapping[str, Any]
    """What Starlette's ``SessionMiddleware`` would put in ``scope["session"]`` (``websocket.session``)."""
    client: tuple[str, int]
    """The peer's address (each member gets its own port on 127.0.0.1 unless given)."""


class Refused(Exception):
    """The server refused the handshake: with an HTTP response (``status``, ``body``), or by closing the socket
    before the first frame (``code``, ``reason``; ``status`` is None)."""

    def __init__(self, status: int | None, body: dict[str, Any], code: int | None = None, reason: str = "") -> None:
        self.status = status
        self.body = body
        self.code = code
        self.reason = reason
        self.detail: str = body.get("detail", reason)
        how = f"HTTP {status}" if status is not None else f"close {code}"
        super().__init__(f"handshake refused: {how}: {self.detail}")


class NothingReceived(AssertionError):
    """No frame came within the time allowed."""


@dataclass(frozen=True)
class Closed:
    """How the server closed a socket."""

    code: int
    reason: str


class Changes:
    """Something that changes now and then (its owner calls ``changed``), and bounded waits for a condition on it:
    how a test waits for a host's event hooks without sleeping."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def changed(self) -> None:
        """Wake every waiter, which checks its condition again."""
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        """Return once ``condition()`` holds, checked now and after each change; raise TimeoutError after ``within``."""
        with anyio.fail_after(within):
            await self.wait_for(condition)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, however long that takes (the caller bounds the wait)."""
        while not condition():
            await self._event.wait()


class RecordingWriter:
    """A ``chat.connection.DirectWriter`` for tests: hands each frame to its member at once.

    ``buffered`` is what it reports as not yet taken by the peer (0: a peer that reads everything); a test
    sets it to play a peer that stopped reading.
    """

    def __init__(self, member: Member) -> None:
        self.stall_timeout = 0.0
        self.batch = False
        self.write_delay = 0.0
        self.on_stall: Callable[[], None] | None = None
        self.buffered = 0
        self._member = member

    def direct_write(self, frame: str, wire: bytes) -> None:
        self._member._text(frame)

    def direct_write_many(self, frames: FrameBatch) -> None:
        for frame in frames.texts:
            self._member._text(frame)

    def direct_buffered(self) -> int:
        return self.buffered

    def direct_close(self, code: int, reason: str) -> None:
        self._member._server_closed(code, reason)


class Member:
    """The test's end of one member's socket: send frames, receive the server's (decoded), disconnect.

    Made by ``ChatTest.member``. ``welcome`` is the first frame (v1's ``welcome``, v1.1's ``hello``),
    already read; ``you`` is the member it names.
    """

    def __init__(self, path: str, scope: Scope, timeout: float) -> None:
        self.path = path
        self.scope = scope
        self.timeout = timeout
        self.texts: list[str] = []
        """Every text message the server sent, as sent (``batch=1`` puts several frames in one)."""
        self.closed: Closed | None = None
        """How the server closed the socket, once it did."""
        self.welcome: dict[str, Any] = {}
        self.endpoint: SocketEndpoint | None = None
        """The endpoint serving this member, when the app dispatches to it directly (a ``create_app`` app)."""
        self.writer: RecordingWriter | None = None
        """The direct writer (``delivery="direct"``)."""
        self.accepted = False
        self._frames: list[dict[str, Any]] = []
        self._read = 0  # frames read so far
        self._incoming: deque[Message] = deque([{"type": "websocket.connect"}])
        self._given = 0  # messages put in _incoming so far
        self._asked = 0  # times the app asked for a message
        self._denial: tuple[int, bytearray] | None = None
        self._refusal: Refused | None = None
        self._client_gone = False
        self._done = False
        self._changes = Changes()

    @property
    def frames(self) -> list[dict[str, Any]]:
        """Every frame the server sent so far (read or not), decoded."""
        return list(self._frames)

    @property
    def you(self) -> dict[str, Any]:
        """The member the server says this is (``{"id": ..., "name": ...}``)."""
        you = self.welcome.get("you")
        assert isinstance(you, dict), self.welcome
        return you

    @property
    def over(self) -> bool:
        """Whether the socket is closed, by either side: no frame will come after those received."""
        return self.closed is not None or self._client_gone or self._done

    @property
    def done(self) -> bool:
        """Whether the endpoint finished with this socket (``on_disconnect`` ran)."""
        return self._done

    async def send(self, frame: Mapping[str, Any] | str | bytes) -> None:
        """Send a frame (a mapping goes as JSON text); return once the endpoint has handled it."""
        if isinstance(frame, bytes):
            message: Message = {"type": "websocket.receive", "bytes": frame}
        else:
            text = frame if isinstance(frame, str) else json.dumps(frame)
            message = {"type": "websocket.receive", "text": text}
        if self.over:
            code, reason = (self.closed.code, self.closed.reason) if self.closed else (1000, "")
            raise WebSocketDisconnect(code, reason)
        number = self._give(message)
        try:
            await self._changes.wait_until(lambda: self._asked > number + 1 or self._done, self.timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.path}: the endpoint took more than {self.timeout:g} s over a frame") from None

    async def receive(self, within: float | None = None) -> dict[str, Any]:
        """The next frame not read yet; raises ``WebSocketDisconnect`` if the server closed the socket and sent
        nothing more, ``NothingReceived`` if nothing comes within ``within`` seconds (``timeout`` unless given)."""
        within = self.timeout if within is None else within
        try:
            await self._changes.wait_until(lambda: self._read < len(self._frames) or self.over, within)
        except TimeoutError:
            recent = "\n  ".join(json.dumps(frame) for frame in self._frames[-10:]) or "(none)"
            raise NothingReceived(
                f"{self.path}: no frame within {within:g} s; the last received:\n  {recent}"
            ) from None
        if self._read == len(self._frames):
            code, reason = (self.closed.code, self.closed.reason) if self.closed else (1000, "")
            raise WebSocketDisconnect(code, reason)
        self._read += 1
        return self._frames[self._read - 1]

    async def receive_until(self, kind: str, within: float | None = None) -> dict[str, Any]:
        """The next frame of type ``kind``, skipping (and reading) the frames before it."""
        while True:
            frame = await self.receive(within)
            if frame.get("type") == kind:
                return frame

    def unread(self) -> list[dict[str, Any]]:
        """The frames received and not read yet, marking them read, without waiting."""
        frames = self._frames[self._read :]
        self._read = len(self._frames)
        return frames

    async def ping(self, ref: str = "sync") -> list[dict[str, Any]]:
        """Ping and wait for the pong: every frame not read before it (so nothing else was on its way)."""
        await self.send({"type": "ping", "ref": ref})
        frames = [await self.receive()]
        while frames[-1] != {"type": "pong", "ref": ref}:
            frames.append(await self.receive())
        return frames[:-1]

    async def join(self, room: str, **fields: Any) -> dict[str, Any]:
        """On ``/ws``: join a room; its welcome (an error frame about the room raises AssertionError)."""
        await self.send({"type": "join", "room": room, **fields})
        while True:
            frame = await self.receive()
            if frame.get("type") == "welcome" and frame.get("room") == room:
                return frame
            if frame.get("type") == "error" and frame.get("room") == room:
                raise AssertionError(f"join of {room!r} refused: {frame}")

    async def wait_closed(self, within: float | None = None) -> Closed:
        """How the server closed the socket, once it has; raises TimeoutError if it does not."""
        await self._changes.wait_until(lambda: self.closed is not None, self.timeout if within is None else within)
        assert self.closed is not None
        return self.closed

    async def disconnect(self, code: int = 1000) -> None:
        """Close the socket from the client's side; return once the endpoint has finished with it."""
        if not self._client_gone and self.closed is None and not self._done:
            self._client_gone = True
            self._give({"type": "websocket.disconnect", "code": code, "reason": ""})
        await self._changes.wait_until(lambda: self._done, self.timeout)

    # --- the ASGI side: what the app sees -----------------------------------------------------------

    async def _receive(self) -> Message:
        self._asked += 1
        self._changes.changed()
        await self._changes.wait_for(lambda: bool(self._incoming))
        return self._incoming.popleft()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.send":
            if self._client_gone:
                raise OSError("the client disconnected")  # what a server raises; Starlette makes it a disconnect
            text = message.get("text")
            if text is None:
                raise AssertionError(f"the server sent a binary frame: {message.get('bytes')!r}")
            self._text(text)
        elif kind == "websocket.close":
            self._server_closed(int(message.get("code") or 1000), message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            self._denial = (int(message["status"]), bytearray())
        elif kind == "websocket.http.response.body":
            assert self._denial is not None, "the response's start comes first"
            self._denial[1].extend(message.get("body", b""))
            if not message.get("more_body", False):
                status, body = self._denial
                self._refusal = Refused(status, _json_body(bytes(body)))
                self._give({"type": "websocket.disconnect", "code": 1006, "reason": ""})
        self._changes.changed()

    def _text(self, text: str) -> None:
        if self._client_gone:
            return  # sent after the client went: nobody reads it
        self.texts.append(text)
        for line in text.split("\n"):  # JSON escapes newlines: only batch=1 messages hold several frames
            self._frames.append(json.loads(line))
        self._changes.changed()

    def _server_closed(self, code: int, reason: str) -> None:
        if self.closed is not None or self._client_gone:
            return
        self.closed = Closed(code, reason)
        if not self.accepted or not self._frames:
            self._refusal = Refused(None, {}, code, reason)
        self._give({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._changes.changed()

    def _give(self, message: Message) -> int:
        """Put a message for the app to receive; its number (the connect is 0)."""
        self._incoming.append(message)
        self._given += 1
        self._changes.changed()
        return self._given

    async def _open(self) -> None:
        """Wait for the handshake's outcome and the first frame; raise Refused if the server refused."""
        try:
            await self._changes.wait_until(
                lambda: self._refusal is not None or bool(self._frames) or self._done, self.timeout
            )
        except TimeoutError:
            raise NothingReceived(f"{self.path}: the handshake got no answer (accepted={self.accepted})") from None
        if self._refusal is not None:
            raise self._refusal
        if not self._frames:
            raise AssertionError(f"{self.path}: the endpoint ended without answering the handshake")
        self.welcome = await self.receive()

    async def _serve(self, app: ASGIApp) -> None:
        """Run the endpoint (or the whole app) on this socket until it is done with it."""
        try:
            if self.endpoint is not None:
                await self.endpoint
            else:
                await app(self.scope, self._receive, self._send)
        finally:
            self._done = True
            self._changes.changed()


class ChatTest:
    """A chat app running for a test: its lifespan, its members' connections, and a clean stop.

    ``async with ChatTest(settings, hooks) as chat_test:`` builds ``create_app(settings, hooks=hooks)``
    (``app=``: any ASGI app instead, with the chat app inside; ``prefix``: where it is mounted).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        hooks: object = None,
        *,
        app: ASGIApp | None = None,
        prefix: str = "",
        delivery: Delivery = "direct",
        timeout: float = WAIT,
    ) -> None:
        if app is not None and (settings is not None or hooks is not None):
            raise TypeError("give either an app, or the settings and hooks to build one")
        self.app: ASGIApp = app if app is not None else create_app(settings or Settings(backend="memory://"), hooks)
        self.prefix = prefix.rstrip("/")
        self.delivery: Delivery = delivery
        self.timeout = timeout
        self.members: list[Member] = []
        self._ports = count(50000)
        self._state: dict[str, Any] = {}
        self._stack = AsyncExitStack()
        self._task_group: TaskGroup | None = None
        self._shutdown = anyio.Event()
        self._lifespan = Changes()
        self._lifespan_said: list[str] = []

    @property
    def chat(self) -> Chat:
        """The app's ``Chat``: its registry, backend, metrics."""
        chats = _chats_of(self.app)
        if not chats:
            raise LookupError("no chat app (app.state.chat) found in the app")
        return chats[0]

    async def __aenter__(self) -> ChatTest:
        try:
            self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
            self._task_group.start_soon(self._run_lifespan)
            await self._lifespan_step("lifespan.startup")
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Stop everything; the test's own exception, if any, propagates as it was raised (not in a group): the
        task group is only told of its tasks' failures."""
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout * 2):
                await self.close()
        finally:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            await self._stack.aclose()

    async def close(self) -> None:
        """Disconnect every member still connected, run the app's shutdown and stop its chat."""
        for member in self.members:
            if not member.done:
                await member.disconnect(1001)
        if "lifespan.startup.complete" in self._lifespan_said:
            self._shutdown.set()
            await self._lifespan_step("lifespan.shutdown")
        for chat in _chats_of(self.app):
            await chat.stop()  # a chat mounted in a host app has no lifespan of its own

    @asynccontextmanager
    async def member(self, room: str | None, **handshake: Unpack[Handshake]) -> AsyncIterator[Member]:
        """A member connected to ``room`` (v1, ``/ws/{room}``), or to ``/ws`` (v1.1) when ``room`` is None; it
        disconnects on exit. Raises ``Refused`` when the server refuses the handshake.

        ``handshake``: ``name``, ``query``, ``headers``, ``cookies``, ``session``, ``client`` (see ``Handshake``).
        """
        member = self.connect(room, **handshake)
        try:
            await member._open()
            yield member
        finally:
            with anyio.CancelScope(shield=True):
                await member.disconnect()

    def multiroom(self, **handshake: Unpack[Handshake]) -> AbstractAsyncContextManager[Member]:
        """A member connected to ``/ws`` (v1.1): ``member(None, ...)``."""
        return self.member(None, **handshake)

    def connect(self, room: str | None, **handshake: Unpack[Handshake]) -> Member:
        """Start a member's handshake and return it at once, without waiting for the server's answer (``member``
        waits); the test disconnects it, or ``ChatTest`` does on exit."""
        assert self._task_group is not None, "use ChatTest as an async context manager"
        params = dict(handshake.get("query", {}))
        if "name" in handshake:
            params["name"] = handshake["name"]
        cookies = handshake.get("cookies")
        path = f"{self.prefix}/ws" if room is None else f"{self.prefix}/ws/{room}"
        raw_headers = [(b"host", b"testserver")]
        if cookies:
            cookie = "; ".join(f"{key}={value}" for key, value in cookies.items())
            raw_headers.append((b"cookie", cookie.encode("latin-1")))
        raw_headers += [
            (key.lower().encode("latin-1"), value.encode("latin-1"))
            for key, value in handshake.get("headers", {}).items()
        ]
        extensions: dict[str, Any] = {DENIAL_EXTENSION: {}}
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": handshake.get("client") or ("127.0.0.1", next(self._ports)),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": urlencode(params).encode(),
            "headers": raw_headers,
            "subprotocols": [],
            "state": dict(self._state),
            "extensions": extensions,
        }
        if "session" in handshake:
            scope["session"] = dict(handshake["session"])
        member = Member(path, scope, self.timeout)
        if self.delivery == "direct":
            member.writer = RecordingWriter(member)
            extensions[DIRECT_EXTENSION] = {"writer": member.writer}
        member.endpoint = _endpoint_for(self.app, scope, member)
        self.members.append(member)
        self._task_group.start_soon(member._serve, self.app)
        return member

    async def _run_lifespan(self) -> None:
        """The app's lifespan, as a server runs it: startup, then shutdown once the test is over."""
        started = False

        async def receive() -> Message:
            nonlocal started
            if not started:
                started = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            self._lifespan_said.append(message["type"])
            if message["type"].endswith(".failed"):
                self._lifespan_said.append(f"failed: {message.get('message', '')}")
            self._lifespan.changed()

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self._state}
        try:
            await self.app(scope, receive, send)
        except Exception:
            if "lifespan.startup.complete" in self._lifespan_said:
                raise
            self._lifespan_said.append("lifespan.startup.failed")  # an app without a lifespan: carry on
        finally:
            self._lifespan_said.append("done")
            self._lifespan.changed()

    async def _lifespan_step(self, step: str) -> None:
        """Wait for the app's answer to a lifespan step; raise RuntimeError when it failed."""
        said = self._lifespan_said
        await self._lifespan.wait_until(lambda: f"{step}.complete" in said or "done" in said, self.timeout)
        failures = [line for line in said if line.startswith("failed: ")]
        if failures:
            raise RuntimeError(f"the app's {step} failed: {failures[0][8:]}")


@asynccontextmanager
async def room_member(
    room: str | None,
    *,
    settings: Settings | None = None,
    hooks: object = None,
    delivery: Delivery = "direct",
    **handshake: Unpack[Handshake],
) -> AsyncIterator[Member]:
    """One member of a fresh app (``ChatTest(settings, hooks, delivery=delivery)``), connected to ``room``."""
    async with (
        ChatTest(settings, hooks, delivery=delivery) as chat_test,
        chat_test.member(room, **handshake) as member,
    ):
        yield member


def _endpoint_for(app: ASGIApp, scope: Scope, member: Member) -> SocketEndpoint | None:
    """The chat endpoint the app would hand this socket to at once (as ``ChatApp`` does), made here so that the
    test can see it; None when the app goes another way (middleware, a host app)."""
    if not isinstance(app, ChatApp) or app.user_middleware or app.exception_handlers:
        return None
    route = app._socket_route(scope)
    if route is None:
        return None
    endpoint = route.endpoint(scope, member._receive, member._send)
    return endpoint if isinstance(endpoint, SocketEndpoint) else None


def _json_body(body: bytes) -> dict[str, Any]:
    """A denial's body: chat's JSON error, or any other body as its ``detail``."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"detail": body.decode("utf-8", "replace")}


def _chats_of(app: ASGIApp) -> list[Chat]:
    """The chats of an app: its own (``app.state.chat``) and those of the apps mounted in it."""
    found: list[Chat] = []
    if isinstance(app, Starlette):
        chat = getattr(app.state, "chat", None)
        if isinstance(chat, Chat):
            found.append(chat)
        for route in app.routes:
            if isinstance(route, Mount) and route.app is not None:
                found += _chats_of(route.app)
    return found
