"""Clients for the end-to-end tests: ``websockets`` helpers with bounded waits, and a raw-socket client."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.wire import client_frame

from .server_process import ServerProcess

WAIT = 5.0
"""The most a test waits for something that should happen at once."""

Frame = dict[str, Any]

TCP_CLOSE = 7
"""The TCP state (first byte of ``struct tcp_info``) of a socket the peer reset."""


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's kernel send buffer may grow to here (Linux ``tcp_wmem``)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as sysctl:
        return int(sysctl.read().split()[2])


def parse(data: str | bytes) -> Frame:
    """One server frame as a dict (every server frame is a JSON object in a text frame)."""
    assert isinstance(data, str), f"binary frame from the server: {data!r}"
    frame = json.loads(data)
    assert isinstance(frame, dict), data
    return frame


async def recv_frame(ws: ClientConnection, within: float = WAIT) -> Frame:
    """The next frame, within ``within`` seconds (every helper here bounds its wait the same way)."""
    with anyio.fail_after(within):
        return parse(await ws.recv())


async def expect(ws: ClientConnection, kind: str, within: float = WAIT) -> Frame:
    """The next frame, which must be of type ``kind``."""
    frame = await recv_frame(ws, within)
    assert frame["type"] == kind, frame
    return frame


async def wait_for(
    ws: ClientConnection, matches: Callable[[Frame], bool], within: float = WAIT
) -> tuple[Frame, list[Frame]]:
    """The first frame that ``matches``, and the frames received before it."""
    skipped: list[Frame] = []
    with anyio.fail_after(within):
        while True:
            frame = parse(await ws.recv())
            if matches(frame):
                return frame, skipped
            skipped.append(frame)


async def wait_leave(ws: ClientConnection, member_ids: set[str], within: float = WAIT) -> list[Frame]:
    """Read until a ``leave`` arrived for each of ``member_ids``; returns every frame read meanwhile."""
    return await wait_presence(ws, "leave", member_ids, within)


async def wait_join(ws: ClientConnection, member_ids: set[str], within: float = WAIT) -> list[Frame]:
    """Read until a ``join`` arrived for each of ``member_ids`` (announced once per presence window); returns
    every frame read meanwhile."""
    return await wait_presence(ws, "join", member_ids, within)


async def wait_presence(ws: ClientConnection, kind: str, member_ids: set[str], within: float = WAIT) -> list[Frame]:
    waiting = set(member_ids)
    seen: list[Frame] = []
    try:
        with anyio.fail_after(within):
            while waiting:
                frame = parse(await ws.recv())
                seen.append(frame)
                if frame["type"] == kind:
                    waiting.discard(frame["member"]["id"])
    except TimeoutError:
        raise AssertionError(f"no {kind} for {waiting} within {within} s; frames meanwhile: {seen}") from None
    return seen


async def wait_closed(ws: ClientConnection, within: float = WAIT) -> list[Frame]:
    """Read until the connection closes (see ``ws.close_code``); returns the frames that came before."""
    seen: list[Frame] = []
    with anyio.fail_after(within):
        try:
            while True:
                seen.append(parse(await ws.recv()))
        except ConnectionClosed:
            pass
        await ws.wait_closed()
    return seen


@asynccontextmanager
async def joined(
    server: ServerProcess, room: str, name: str, **query: str | int
) -> AsyncIterator[tuple[ClientConnection, Frame]]:
    """A connection to ``room`` whose ``welcome`` frame was read.

    ``max_queue=None``: a test that has not read every frame yet must still see the server's close
    frame; with flow control on, a client holding 16 unread frames stops reading its socket and its
    ``close()`` waits ``close_timeout`` for an answer it never reads.
    """
    with anyio.fail_after(WAIT):
        ws = await connect(server.url(room, name=name, **query), open_timeout=WAIT, close_timeout=WAIT, max_queue=None)
    async with ws:
        welcome = await expect(ws, "welcome")
        yield ws, welcome


async def wait_health(server: ServerProcess, *, connections: int, rooms: int, within: float = WAIT) -> dict[str, Any]:
    """Poll ``/healthz`` until it shows these figures (disconnects are processed asynchronously)."""
    body: dict[str, Any] = {}
    try:
        with anyio.fail_after(within):
            while True:
                body = await server.healthz()
                if body["connections"] == connections and body["rooms"] == rooms:
                    return body
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"healthz still {body} after {within} s, want {connections=} {rooms=}") from None


# --- a client on a bare socket -----------------------------------------------------------------


class RawClient:
    """A WebSocket client on a blocking socket, for what ``websockets`` will not do: stop reading, vanish."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None, timeout: float = WAIT) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the server sees is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        )
        self.sock.sendall(request.encode())
        head = self._read_until(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0].decode()

    @property
    def upgraded(self) -> bool:
        return " 101 " in self.status_line

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before {marker!r}: {self._buffer!r}")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed with {len(self._buffer)} of {size} bytes read")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        """The next frame's opcode and payload (server frames are unmasked and, here, never fragmented)."""
        first, second = self._read_exactly(2)
        assert first & 0x80, "fragmented server frame"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
        return first & 0x0F, self._read_exactly(size)

    def recv_json(self) -> Frame:
        """The next frame, which must be a text frame holding a JSON object."""
        opcode, payload = self.recv_frame()
        assert opcode == 0x1, (opcode, payload)
        return parse(payload.decode())

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame, as a client must."""
        self.sock.sendall(client_frame(opcode, payload))

    def send_frames(self, payloads: list[bytes]) -> None:
        """Send several text frames in one write, so that the server reads them together."""
        self.sock.sendall(b"".join(client_frame(0x1, payload) for payload in payloads))

    def tcp_state(self) -> int:
        """The socket's TCP state as the kernel sees it (``TCP_ESTABLISHED``, ``TCP_CLOSE``, ...)."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return info[0]

    def drain(self) -> OSError | None:
        """Read whatever the socket still holds: a reset connection ends in an error, a FIN in None."""
        try:
            while self.sock.recv(65536):
                pass
        except OSError as exc:
            return exc
        return None

    def close(self) -> None:
        """Close the socket without a close frame (the server sees EOF)."""
        self.sock.close()

    def reset(self) -> None:
        """Close the socket with a RST (SO_LINGER 0), without a close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def send_message(ws: ClientConnection, text: str, ref: str | int | None = None) -> None:
    """Send one ``message`` frame."""
    frame: Frame = {"type": "message", "text": text}
    if ref is not None:
        frame["ref"] = ref
    await ws.send(json.dumps(frame))


async def say(ws: ClientConnection, *texts: str, within: float = WAIT) -> list[int]:
    """Send messages with refs; wait for every ack and for each message's own echo; returns their seqs.

    Other frames read meanwhile are dropped. The echo is awaited too because an ack may come before
    it (on Redis the echo makes a round trip through pub/sub), and a test's next read must not find it.
    """
    refs = {f"say-{index}": index for index in range(len(texts))}
    for ref, index in refs.items():
        await send_message(ws, texts[index], ref)
    seqs: dict[int, int] = {}
    echoed: set[int] = set()
    with anyio.fail_after(within):
        while len(seqs) < len(refs) or not echoed.issuperset(seqs.values()):
            frame = parse(await ws.recv())
            assert frame["type"] != "error", frame
            if frame["type"] == "ack" and frame["ref"] in refs:
                seqs[refs[frame["ref"]]] = frame["seq"]
            elif frame["type"] == "message":
                echoed.add(frame["seq"])
    return [seqs[index] for index in range(len(texts))]


async def messages(ws: ClientConnection, count: int, within: float = WAIT) -> list[Frame]:
    """The next ``count`` ``message`` frames (skipping joins, leaves, typing and acks)."""
    found: list[Frame] = []
    with anyio.fail_after(within):
        while len(found) < count:
            frame = parse(await ws.recv())
            assert frame["type"] != "error", frame
            if frame["type"] == "message":
                found.append(frame)
    return found


async def raw_join(server: ServerProcess, room: str, name: str, rcvbuf: int | None = None) -> tuple[RawClient, Frame]:
    """A raw client in ``room`` whose ``welcome`` was read (the blocking calls run in a worker thread)."""

    def connect_and_welcome() -> tuple[RawClient, Frame]:
        raw = RawClient(server.port, f"/ws/{room}?name={name}", rcvbuf=rcvbuf)
        try:
            assert raw.upgraded, raw.status_line
            welcome = raw.recv_json()
            assert welcome["type"] == "welcome", welcome
        except BaseException:
            raw.close()
            raise
        return raw, welcome

    return await anyio.to_thread.run_sync(connect_and_welcome)


async def wait_tcp_state(raw: RawClient, state: int, within: float) -> None:
    """Poll the kernel's view of the raw socket (every 0.1 s) until it is in ``state``."""
    try:
        with anyio.fail_after(within):
            while True:
                if raw.tcp_state() == state:
                    return
                await anyio.sleep(0.1)  # the kernel offers no event to wait for
    except TimeoutError:
        raise AssertionError(f"TCP state still {raw.tcp_state()} after {within} s, want {state}") from None


# --- members that keep talking ----------------------------------------------------------------


class Participant:
    """A member that reads every frame in the background (so it never holds the server back) and, once
    ``publish`` runs, sends messages with refs, up to ``window`` of them unanswered at a time."""

    def __init__(self, ws: ClientConnection, welcome: Frame, window: int = 8) -> None:
        self.ws = ws
        self.welcome = welcome
        self.window = window
        self.received: list[Frame] = []
        self.sent: dict[str, str] = {}
        """ref -> text of every message sent."""
        self.acked: dict[str, int] = {}
        """ref -> seq of every message acknowledged."""
        self.refused: dict[str, str] = {}
        """ref -> error code of every message refused."""
        self.close_code: int | None = None
        self.closed = False
        self._stopped = False
        self._changed = anyio.Event()

    @property
    def name(self) -> str:
        name: str = self.welcome["you"]["name"]
        return name

    @property
    def in_flight(self) -> int:
        """Messages sent and neither acknowledged nor refused yet."""
        return len(self.sent) - len(self.acked) - len(self.refused)

    def seqs(self) -> list[int]:
        """The seqs of the ``message`` frames received, in the order they came."""
        return [frame["seq"] for frame in self.received if frame["type"] == "message"]

    def acked_texts(self) -> dict[int, str]:
        """seq -> text of every message of this member's that was acknowledged."""
        return {seq: self.sent[ref] for ref, seq in self.acked.items()}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def read(self) -> None:
        """Read until the connection ends, recording frames, acks and refusals."""
        try:
            async for data in self.ws:
                frame = parse(data)
                self.received.append(frame)
                ref = frame.get("ref")
                if frame["type"] == "ack" and ref in self.sent:
                    self.acked[ref] = frame["seq"]
                elif frame["type"] == "error" and ref in self.sent:
                    self.refused[ref] = frame["code"]
                self._notify()
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.closed = True
        self._notify()

    async def wait_until(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        """Wait until ``condition()`` holds, checking it after each frame received or sent (and at the close)."""
        try:
            with anyio.fail_after(within):
                while not condition():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: condition not met within {within} s") from None

    async def wait_closed(self, within: float = WAIT) -> None:
        """Wait until the connection has ended."""
        await self.wait_until(lambda: self.closed, within)

    async def wait_answered(self, within: float = WAIT) -> None:
        """Wait until every message sent was acknowledged or refused (or the connection ended)."""
        await self.wait_until(lambda: self.in_flight == 0 or self.closed, within)

    async def wait_seqs(self, seqs: Iterable[int], within: float = WAIT) -> None:
        """Wait until a ``message`` frame came for each of ``seqs``."""
        wanted = set(seqs)
        await self.wait_until(lambda: wanted <= set(self.seqs()), within)

    async def publish(self, count: int | None = None, within: float = 30.0) -> None:
        """Send messages (``count`` of them, or until ``stop``) while the connection lasts, never more than
        ``window`` unanswered at a time."""
        sent = 0
        while not self._stopped and not self.closed and sent != count:
            if self.in_flight >= self.window:
                await self.wait_until(lambda: self.in_flight < self.window or self._stopped or self.closed, within)
                continue
            sent += 1
            ref, text = f"{self.name}-{sent}", f"{self.name} says {sent}"
            self.sent[ref] = text
            try:
                await send_message(self.ws, text, ref)
            except ConnectionClosed:
                return
            self._notify()

    def stop(self) -> None:
        """Make ``publish`` return before its next message."""
        self._stopped = True
        self._notify()


async def page_history(ws: ClientConnection, limit: int = 100, within: float = 60.0) -> list[Frame]:
    """A room's whole history through ``history`` frames, paged back with ``before`` until a page reaches
    seq 1 (or comes back short); oldest first. Each page must be oldest first and end below the page after it."""
    pages: list[list[Frame]] = []
    before: int | None = None
    with anyio.fail_after(within):
        while True:
            ref = f"page-{len(pages)}"
            request: Frame = {"type": "history", "limit": limit, "ref": ref}
            if before is not None:
                request["before"] = before
            await ws.send(json.dumps(request))

            def answers(frame: Frame, ref: str = ref) -> bool:
                return frame.get("ref") == ref

            answer, _ = await wait_for(ws, answers)
            assert answer["type"] == "history", answer
            page: list[Frame] = answer["messages"]
            seqs = [message["seq"] for message in page]
            assert seqs == sorted(seqs), f"a page not oldest first: {seqs}"
            assert before is None or not seqs or seqs[-1] < before, (before, seqs)
            pages.insert(0, page)
            if len(page) < limit or seqs[0] == 1:
                return [message for older in pages for message in older]
            before = seqs[0]
