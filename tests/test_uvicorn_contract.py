"""What ``chat.uvicorn`` relies on in uvicorn, checked against the uvicorn installed; and uvicorn run in a test.

The protocol classes subclass uvicorn's private ones. Each subclass lists the names it relies on
(``RELIES_ON_METHODS``, ``RELIES_ON_ATTRIBUTES``); these tests fail naming whatever a new uvicorn
no longer has, and whatever the subclass uses without listing it. The helpers below (``run_server``,
``EchoApp``, ``RawSocket``) serve an app with those classes in the test's own event loop, as
uvicorn's tests do; ``tests/test_uvicorn_websocket.py`` and ``tests/test_uvicorn_http.py`` use them.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import os
import socket
import struct
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import uvicorn
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.version import version as websockets_version

from chat.connection import DIRECT_EXTENSION
from chat.frames import text_frame
from chat.uvicorn import http, standins, websocket
from chat.uvicorn.http import ChatHttpProtocol
from chat.uvicorn.websocket import ChatWebSocketProtocol
from tests.wire import client_frame

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""The most a test waits for something that should happen at once."""

TEXT, CLOSE = 0x1, 0x8

ASGIApp = Any  # an ASGI application (uvicorn's own types are private)


@pytest.fixture(
    params=[pytest.param(("asyncio", {}), id="asyncio"), pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Both loops the server runs on: uvicorn picks uvloop when it is installed."""
    return request.param


async def test_the_parametrized_loop_runs(anyio_backend: Any) -> None:
    """The parametrized loop really runs (uvloop's loop class is not asyncio's)."""
    uses_uvloop = anyio_backend[1].get("use_uvloop", False)
    assert ("uvloop" in type(asyncio.get_running_loop()).__module__) == uses_uvloop


# --- uvicorn in the test's event loop ------------------------------------------------------------


@dataclass
class Running:
    """A server started by ``run_server``: its port, and uvicorn's ``Server``."""

    port: int
    server: Server

    def shut_down(self) -> None:
        """Start the shutdown uvicorn does on SIGTERM (every WebSocket is closed with 1012)."""
        self.server.should_exit = True


@asynccontextmanager
async def run_server(app: ASGIApp, **config: Any) -> AsyncIterator[Running]:
    """uvicorn serving ``app`` with chat's protocol classes on a free loopback port, in this event loop.

    The socket listens before uvicorn starts, so clients may connect at once. On exit the server
    shuts down as on SIGTERM, and must be done within ``WAIT`` seconds.
    """
    settings: dict[str, Any] = {
        "ws": ChatWebSocketProtocol,
        "http": ChatHttpProtocol,
        "lifespan": "off",
        "log_config": None,
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": 1,
    }
    server = Server(Config(app, **(settings | config)))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    # A task of its own, as in uvicorn's tests (a task group would wrap the test's failures in an ExceptionGroup).
    serving = asyncio.get_running_loop().create_task(server.serve([listener]))
    try:
        yield Running(listener.getsockname()[1], server)
    finally:
        server.should_exit = True
        with anyio.fail_after(WAIT):
            await serving


@dataclass
class Session:
    """One connection as ``EchoApp`` saw it: the direct writer, the ASGI ``send``, and how it ended."""

    writer: ChatWebSocketProtocol
    send: Any
    ended: anyio.Event = field(default_factory=anyio.Event)
    """Set when the app got ``websocket.disconnect``, just before it returns."""
    close_code: int | None = None
    close_reason: str = ""


class EchoApp:
    """A raw ASGI app on the direct path: accepts, hands each connection to the test, echoes text through the writer.

    It keeps nothing of a connection once it returns (the tests that watch a protocol die need that).
    """

    def __init__(self) -> None:
        self._accepted, self._sessions = anyio.create_memory_object_stream[Session](16)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        writer: ChatWebSocketProtocol = scope["extensions"][DIRECT_EXTENSION]["writer"]
        session = Session(writer, send)
        self._accepted.send_nowait(session)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                session.close_code = message["code"]
                session.close_reason = message.get("reason") or ""
                session.ended.set()
                return
            text = message.get("text")
            if text is not None:
                writer.direct_write(text, text_frame(text.encode()))

    async def accepted(self) -> Session:
        """The next connection the app accepted."""
        with anyio.fail_after(WAIT):
            return await self._sessions.receive()


async def ended(session: Session) -> tuple[int | None, str]:
    """The close code and reason the app was told, once it was told."""
    with anyio.fail_after(WAIT):
        await session.ended.wait()
    return session.close_code, session.close_reason


# --- a client on a bare socket -------------------------------------------------------------------


class RawSocket:
    """A client on a bare non-blocking socket: it sends exactly what it is told and reads only when asked.

    For what the ``websockets`` client will not do: stop reading, send invalid UTF-8, send a frame
    and a close in one write, show every frame the server wrote (after a close too), reset.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> RawSocket:
        """A TCP connection to the server; ``rcvbuf`` shrinks the window the server sees from the start."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with anyio.fail_after(WAIT):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    @classmethod
    async def upgraded(cls, port: int, rcvbuf: int | None = None, extensions: str | None = None) -> RawSocket:
        """A WebSocket connection whose handshake succeeded (offering ``extensions``, if any)."""
        raw = await cls.connect(port, rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "" if extensions is None else f"Sec-WebSocket-Extensions: {extensions}\r\n"
        await raw.send(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n".encode()
        )
        head = await raw.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return raw

    async def send(self, data: bytes) -> None:
        with anyio.fail_after(WAIT):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _read_more(self) -> bool:
        with anyio.fail_after(WAIT):
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        self._buffer += chunk
        return bool(chunk)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if not await self._read_more():
                raise ConnectionError(f"closed before {marker!r}: {self._buffer!r}")
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    async def read_to_end(self) -> bytes:
        """Everything the server still sends, until it closes the connection (EOF)."""
        while await self._read_more():
            pass
        data, self._buffer = self._buffer, b""
        return data

    async def frames_to_end(self) -> list[tuple[int, bytes]]:
        """Every frame the server sends until EOF, as (opcode, payload)."""
        return parse_frames(await self.read_to_end())

    async def reset_seen(self) -> bool:
        """Read what is left; True if the connection ends in a reset (RST), False if in an orderly EOF (FIN)."""
        try:
            await self.read_to_end()
        except ConnectionResetError:
            return True
        return False

    def close(self) -> None:
        """Close the socket (FIN) without a close frame."""
        self.sock.close()

    def reset(self) -> None:
        """Close the socket with a RST (SO_LINGER 0), without a close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def close_frame(code: int, reason: str = "") -> bytes:
    """A masked client close frame."""
    return client_frame(CLOSE, struct.pack("!H", code) + reason.encode())


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked, unfragmented), as (opcode, payload); a truncated last frame fails."""
    frames = []
    while data:
        first, second = data[0], data[1]
        assert first & 0x80, f"fragmented server frame: {data[:2]!r}"
        assert not second & 0x80, f"masked server frame: {data[:2]!r}"
        size, start = second & 0x7F, 2
        if size == 126:
            (size,), start = struct.unpack("!H", data[2:4]), 4
        elif size == 127:
            (size,), start = struct.unpack("!Q", data[2:10]), 10
        assert len(data) >= start + size, f"truncated frame: {len(data) - start} of {size} bytes"
        frames.append((first & 0x0F, data[start : start + size]))
        data = data[start + size :]
    return frames


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload."""
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


# --- the contract ----------------------------------------------------------------------------------


async def accept_and_wait(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept, then wait for the disconnect."""
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@asynccontextmanager
async def live_stock_protocols() -> AsyncIterator[tuple[WebSocketsSansIOProtocol, HttpToolsProtocol]]:
    """uvicorn's own protocol objects (not chat's, which could mask a missing name) of one open WebSocket."""
    made: list[asyncio.Protocol] = []

    class StockWebSocket(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            made.append(self)

    class StockHttp(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            made.append(self)

    async with run_server(accept_and_wait, ws=StockWebSocket, http=StockHttp) as running:
        raw = await RawSocket.upgraded(running.port)
        try:
            http_protocol, ws_protocol = made  # the HTTP protocol hands the connection over once upgraded
            assert isinstance(http_protocol, StockHttp)
            assert isinstance(ws_protocol, StockWebSocket)
            yield ws_protocol, http_protocol
        finally:
            raw.close()


SUBCLASSES = [
    pytest.param(ChatWebSocketProtocol, WebSocketsSansIOProtocol, websocket, id="websocket"),
    pytest.param(ChatHttpProtocol, HttpToolsProtocol, http, id="http"),
]


@pytest.mark.parametrize(("subclass", "base", "module"), SUBCLASSES)
def test_uvicorn_has_every_method_the_subclass_relies_on(subclass: type, base: type, module: Any) -> None:
    """Every method the subclass overrides or calls is still a method of uvicorn's class."""
    missing = [name for name in module.RELIES_ON_METHODS if not callable(getattr(base, name, None))]
    assert not missing, f"uvicorn {uvicorn.__version__}'s {base.__name__} has no {missing} ({subclass.__name__})"


async def test_uvicorn_protocols_have_every_attribute_the_subclasses_rely_on() -> None:
    """uvicorn's protocol objects of an open connection have every attribute the subclasses read or replace."""
    async with live_stock_protocols() as (ws_protocol, http_protocol):
        missing = {
            "WebSocketsSansIOProtocol": [
                name for name in websocket.RELIES_ON_ATTRIBUTES if not hasattr(ws_protocol, name)
            ],
            "HttpToolsProtocol": [name for name in http.RELIES_ON_ATTRIBUTES if not hasattr(http_protocol, name)],
        }
    assert missing == {"WebSocketsSansIOProtocol": [], "HttpToolsProtocol": []}, f"uvicorn {uvicorn.__version__}"


def names_reached(subclass: type) -> set[str]:
    """The names the subclass's code reaches through ``self.`` or ``super().``, and the methods it defines."""
    [definition] = ast.parse(textwrap.dedent(inspect.getsource(subclass))).body
    assert isinstance(definition, ast.ClassDef)
    names = {item.name for item in definition.body if isinstance(item, ast.FunctionDef)}
    for node in ast.walk(definition):
        if isinstance(node, ast.Attribute) and (is_self(node.value) or is_super_call(node.value)):
            names.add(node.attr)
    return names


def is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def is_super_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


async def test_the_lists_name_everything_the_subclasses_use_of_uvicorn() -> None:
    """Every uvicorn name the subclasses use is listed, and nothing listed is unused: the lists stay true."""
    async with live_stock_protocols() as (ws_protocol, http_protocol):
        stock: list[tuple[type, object, Any]] = [
            (ChatWebSocketProtocol, ws_protocol, websocket),
            (ChatHttpProtocol, http_protocol, http),
        ]
        for subclass, stock_protocol, module in stock:
            used = names_reached(subclass) - {"__init__"}
            listed = set(module.RELIES_ON_METHODS) | set(module.RELIES_ON_ATTRIBUTES)
            unlisted = {name for name in used if hasattr(stock_protocol, name)} - listed
            assert not unlisted, f"{subclass.__name__} uses uvicorn's {sorted(unlisted)} but does not list them"
            assert listed <= used, f"{subclass.__name__} lists {sorted(listed - used)} but does not use them"


def uses_of(attribute: str, klass: type) -> set[str]:
    """What ``klass``'s code reaches on ``self.<attribute>`` (``"<whole>"``: the object itself is handed on or read)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == attribute and is_self(node.value):
            if isinstance(node.ctx, ast.Store):
                continue  # assigned (in __init__)
            parent = parents[node]
            uses.add(parent.attr if isinstance(parent, ast.Attribute) else "<whole>")
    return uses


@pytest.mark.parametrize(
    ("attribute", "standin"),
    [pytest.param("queue", standins.Inbox, id="queue"), pytest.param("writable", standins.Flag, id="writable")],
)
def test_uvicorn_uses_its_queue_and_event_only_through_what_the_standins_offer(attribute: str, standin: type) -> None:
    """uvicorn's protocol reaches ``queue`` and ``writable`` only through methods ``Inbox`` and ``Flag`` have."""
    uses = uses_of(attribute, WebSocketsSansIOProtocol)
    assert uses, f"uvicorn {uvicorn.__version__} no longer uses self.{attribute}: the stand-in replaces nothing"
    offered = {name for name in dir(standin) if not name.startswith("_")}
    assert uses <= offered, f"uvicorn {uvicorn.__version__} reaches self.{attribute} through {sorted(uses - offered)}"


async def test_every_attribute_of_an_open_connection_is_in_a_slot() -> None:
    """An open connection's protocol keeps every attribute (uvicorn's and chat's) in slots: no instance dict."""
    app = EchoApp()
    async with run_server(app) as running:
        raw = await RawSocket.upgraded(running.port)
        try:
            session = await app.accepted()
            unslotted = sorted(vars(session.writer))
        finally:
            raw.close()
    assert not unslotted, f"uvicorn {uvicorn.__version__} sets {unslotted}: add them to websocket.UVICORN_STATE"


def test_websockets_has_what_a_handshake_httptools_parsed_relies_on() -> None:
    """``websockets``' server protocol still has every name the fast handshake relies on: its parser where the
    handshake replaces it, ``Protocol.parse`` to parse frames, the attributes ``accept`` would set."""
    conn = ServerProtocol()
    owners: dict[str, object] = {"Protocol": Protocol, "ServerProtocol": conn}
    missing = [
        name for name in websocket.RELIES_ON_WEBSOCKETS if not hasattr(owners[name.split(".")[0]], name.split(".")[1])
    ]
    assert not missing, f"websockets {websockets_version} has no {missing}"
    assert inspect.isgenerator(conn.parser)
    assert inspect.isgeneratorfunction(Protocol.parse)
    conn.state = OPEN
    assert conn.state is OPEN
