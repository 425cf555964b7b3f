"""One process of the load generator: many picows connections on one uvloop loop, driven over a pipe.

The harness (``pool.py``) sends ``(id, command, arguments)`` and gets back ``(id, reply)``; a
command that starts load (``publish``, ``rate``) answers at once and the load runs on while
``stats`` reads the counters. Every wait here is bounded.

What a client counts: ``message`` frames (each one a delivery, its latency taken from the send
timestamp that the publisher put at the start of the text: ``time.monotonic_ns()``, one clock for
every process of the host), ``ack`` frames, the first ``leave``, ``error`` frames and closes.
``join``, ``typing`` and anything else are ignored. A text frame may hold several JSON objects
separated by newlines (opt-in coalescing); each counts on its own.

A member speaks protocol v1 (``/ws/{room}``: one room, ready at its ``welcome``) or v1.1 (``/ws``:
ready at its ``hello``, then in each room it sends a ``join`` frame for, once that room's
``welcome`` is back; its messages name their room). The client offers
permessage-deflate only when asked (``deflate``) and inflates what the server compressed; it never
compresses what it sends (RFC 7692 allows an uncompressed message on a deflate connection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from benchmark import latency
from benchmark.soak_client import Soak
from benchmark.storm_client import Storm

MESSAGE_PREFIX = b'{"type":"message"'
ACK_PREFIX = b'{"type":"ack"'
TEXT_KEY = b'"text":"'
STAMP_DIGITS = 20
DEFLATE_TAIL = b"\x00\x00\xff\xff"
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
PADDING = b"x" * 65536
TCP_ESTABLISHED = 1
V1 = "v1"
"""A member on ``/ws/{room}``: one connection per room."""
WS = "ws"
"""A member on ``/ws`` (protocol v1.1): one connection, a ``join`` frame per room."""
ENDPOINTS = (V1, WS)
SLOW_POLL = 0.05
"""How often the state of a never-reading socket is checked (the kernel offers no event for it)."""
TICK = 0.005
"""Open-loop publishers send what is due every 5 ms."""
MAX_LAG = 0.25
"""An open-loop ticker more than this far behind skips ahead (and counts what it skipped)."""
READ_BUFFER = 8192
PACE = 0.001
"""Default pause per loop iteration: the client reads in batches (see ``Worker.pace``)."""
ERROR_SAMPLES = 5

_FINE_NS = latency.FINE_NS
_FINE_LIMIT_NS = latency.FINE_LIMIT_NS
_FINE_BUCKETS = latency.FINE_BUCKETS
_COARSE_NS = latency.COARSE_NS
_LAST = latency.LAST
_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_monotonic_ns = time.monotonic_ns

Reply = dict[str, Any]


def message_frame(size: int, ref: int | None, room: str | None = None) -> bytes:
    """A ``message`` frame whose text is the send time (20 digits, ns) padded to ``size`` characters.

    With ``room`` (on ``/ws``) the frame names its room.
    """
    stamp = b"%020d" % _monotonic_ns()
    text = stamp + PADDING[: max(0, size - STAMP_DIGITS)]
    head = b'{"type":"message","text":"' if room is None else b'{"type":"message","room":"%s","text":"' % room.encode()
    if ref is None:
        return head + text + b'"}'
    return head + text + b'","ref":%d}' % ref


def join_frame(room: str, ref: int) -> bytes:
    """A ``join`` frame for ``room`` (``/ws``); its welcome echoes ``ref``."""
    return json.dumps({"type": "join", "room": room, "ref": ref}, separators=(",", ":")).encode()


def path(endpoint: str, room: str, name: str, query: str) -> str:
    """The request path of a member: ``/ws/{room}`` (v1) or ``/ws`` (v1.1, its rooms joined afterwards)."""
    if endpoint == V1:
        return f"/ws/{room}?name={name}{query}"
    if endpoint == WS:
        return f"/ws?name={name}{query}"
    raise ValueError(f"unknown endpoint {endpoint!r}: {', '.join(ENDPOINTS)}")


def rooms_of(rooms: str) -> list[str]:
    """The rooms of a member: one for v1, comma-separated for ``/ws`` (none: it only connects)."""
    return [room for room in rooms.split(",") if room]


class Client(WSListener):
    """One WebSocket member: counts what it receives, records latencies in its worker's histogram.

    ``ready`` is done at the first ``welcome`` (v1) or at the ``hello`` (``/ws``); ``join`` sends
    ``join`` frames (``/ws``) and its future is done once as many more welcomes came back.
    """

    def __init__(self, worker: Worker, endpoint: str = V1) -> None:
        super().__init__()
        self.worker = worker
        self.endpoint = endpoint
        self.hist = worker.hist
        self.transport: WSTransport | None = None
        self.received = 0
        self.acks = 0
        self.sent = 0
        self.closed = False
        self.close_code: int | None = None
        self.room: str | None = None
        """The room its messages name (``/ws``); None on v1, whose messages go to the connection's room."""
        self.ready: asyncio.Future[None] = worker.loop.create_future()
        self.welcomes = 0
        self.joining: asyncio.Future[None] | None = None
        self.join_target = 0
        self.gone: asyncio.Future[None] = worker.loop.create_future()
        self.waiter: asyncio.Future[None] | None = None
        self.inflater: Any = None
        self.fragments: list[bytes] | None = None
        self.fragments_compressed = False

    # --- picows callbacks ---------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        offered = transport.response.headers.get("Sec-WebSocket-Extensions", "")
        if "permessage-deflate" in offered:
            self.inflater = zlib.decompressobj(-15)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.fin and frame.msg_type == _TEXT and not frame.rsv1:
            self.payload(frame.get_payload_as_bytes())
        else:
            self.other_frame(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed:
            self.closed = True
            self.worker.disconnected += 1
        if not self.gone.done():
            self.gone.set_result(None)
        first = "welcome" if self.endpoint == V1 else "hello"
        self.fail(self.ready, f"closed before the {first} (code {self.close_code})")
        self.fail(self.joining, f"closed before every welcome (code {self.close_code})")
        self.wake()

    @staticmethod
    def fail(future: asyncio.Future[None] | None, reason: str) -> None:
        if future is not None and not future.done():
            future.set_exception(ConnectionError(reason))
            future.exception()  # retrieved: nobody may be waiting any more (the wait timed out)

    # --- frames ---------------------------------------------------------------------------------

    def payload(self, data: bytes) -> None:
        """One complete text message (hot path: a compact ``message`` frame)."""
        if data.startswith(MESSAGE_PREFIX) and b"\n" not in data:
            start = data.find(TEXT_KEY) + 8
            try:
                elapsed = _monotonic_ns() - int(data[start : start + STAMP_DIGITS])
            except ValueError:
                self.other(data)
                return
            self.received += 1
            if elapsed < _FINE_LIMIT_NS:
                self.hist[elapsed // _FINE_NS if elapsed > 0 else 0] += 1
            else:
                index = _FINE_BUCKETS + elapsed // _COARSE_NS
                self.hist[index if index < _LAST else _LAST] += 1
            if self.waiter is not None:
                self.wake()
        else:
            self.other(data)

    def other(self, data: bytes) -> None:
        """Everything but a compact message frame: batches, acks, welcome, leave, errors, other JSON."""
        if b"\n" in data:
            for line in data.split(b"\n"):
                if line.strip():
                    self.payload(line)
            return
        if data.startswith(ACK_PREFIX):
            self.acks += 1
            if self.waiter is not None:
                self.wake()
            return
        try:
            frame = json.loads(data)
            kind = frame.get("type") if isinstance(frame, dict) else None
        except ValueError:
            kind = None
            frame = None
        if kind == "message":
            text = str(frame.get("text", "")) if isinstance(frame, dict) else ""
            self.received += 1
            if text[:STAMP_DIGITS].isdigit():
                self.worker.record(_monotonic_ns() - int(text[:STAMP_DIGITS]))
            self.wake()
        elif kind == "ack":
            self.acks += 1
            self.wake()
        elif kind == "welcome":
            self.welcomes += 1
            if self.endpoint == V1 and not self.ready.done():
                self.ready.set_result(None)
            if self.joining is not None and self.welcomes >= self.join_target and not self.joining.done():
                self.joining.set_result(None)
        elif kind == "hello":
            if self.endpoint == WS and not self.ready.done():
                self.ready.set_result(None)
        elif kind == "leave":
            self.worker.note_leave()
        elif kind == "error" or kind is None:
            sample = data[:200].decode("utf-8", "replace")
            self.worker.note_error(sample)
            self.fail(self.joining, f"refused: {sample}")

    def other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == _CLOSE:
            code = frame.get_close_code()
            self.close_code = int(code.value) if isinstance(code, WSCloseCode) else int(code)
            self.worker.close_codes[self.close_code] += 1
            with contextlib.suppress(Exception):
                transport.send_close(code)
            transport.disconnect()
            return
        if kind != _TEXT and kind != _CONTINUATION:
            return  # pings are answered by picows itself; pongs and binary frames mean nothing here
        if kind == _TEXT:
            self.fragments = []
            self.fragments_compressed = frame.rsv1
        if self.fragments is None:
            return
        self.fragments.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        data = b"".join(self.fragments)
        self.fragments = None
        if self.fragments_compressed:
            if self.inflater is None:
                self.worker.note_error("compressed frame on a connection without permessage-deflate")
                return
            data = self.inflater.decompress(data + DEFLATE_TAIL)
        self.payload(data)

    # --- publishing -----------------------------------------------------------------------------

    def send_message(self, size: int, ref: bool) -> None:
        """Send one ``message`` frame, stamped now."""
        if self.transport is None or self.closed:
            return
        self.sent += 1
        self.transport.send(_TEXT, message_frame(size, self.sent if ref else None, self.room))

    def join(self, rooms: list[str]) -> asyncio.Future[None]:
        """Send a ``join`` frame for each of ``rooms`` at once: a future done once a welcome came back for each.

        It fails on an ``error`` frame or a close meanwhile.
        """
        future: asyncio.Future[None] = self.worker.loop.create_future()
        if self.transport is None or self.closed:
            self.fail(future, "not connected")
            return future
        self.joining = future
        self.join_target = self.welcomes + len(rooms)
        if not rooms:
            future.set_result(None)
        for ref, room in enumerate(rooms, 1):
            self.transport.send(_TEXT, join_frame(room, ref))
        return future

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.transport.send_close(WSCloseCode.GOING_AWAY)
            self.transport.disconnect(graceful=False)


class SlowClient:
    """A member on a bare socket with a small receive buffer that reads its welcome and never reads again."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed_at: float | None = None

    def tcp_state(self) -> int:
        try:
            return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        except OSError:
            return 0

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def frame_length(data: bytes) -> int | None:
    """The total size of the server frame at the start of ``data``, or None if its header is incomplete."""
    if len(data) < 2:
        return None
    size = data[1] & 0x7F
    if size == 126:
        if len(data) < 4:
            return None
        return 4 + int.from_bytes(data[2:4], "big")
    if size == 127:
        if len(data) < 10:
            return None
        return 10 + int.from_bytes(data[2:10], "big")
    return 2 + size


class Worker:
    """The state of one client process: its connections, counters and histogram."""

    def __init__(self, pipe: Connection, pace: float) -> None:
        self.pipe = pipe
        self.pace_seconds = pace
        self.pacing = False
        self.loop = asyncio.get_running_loop()
        self.clients: list[Client] = []
        self.named: dict[str, Client] = {}
        """The members by name (``join_timed`` finds a ``/ws`` member's connection here)."""
        self.publisher: Client | None = None
        self.slow: list[SlowClient] = []
        self.hist = [0] * latency.SIZE
        self.errors = 0
        self.error_samples: list[str] = []
        self.close_codes: Counter[int] = Counter()
        self.disconnected = 0
        self.leave_at: float | None = None
        self.stopped = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.publishing: asyncio.Task[None] | None = None
        self.publish_state: dict[str, Any] = {}
        self.stop_publishing = False
        self.ticker: asyncio.Task[None] | None = None
        self.open_sent = 0
        self.open_skipped = 0
        self.slow_watch: asyncio.Task[None] | None = None
        self.storm: Storm | None = None
        """The ``storm`` scenario's members (``storm_client.py``), while it runs."""
        self.soak: Soak | None = None
        """The ``soak`` scenario's steady members and churners (``soak_client.py``), while it runs."""

    # --- the command pipe -----------------------------------------------------------------------

    def pace(self) -> None:
        """Sleep once per loop iteration, so that each read takes whatever arrived meanwhile.

        A client that waits in epoll for every frame makes the kernel wake it (at the server's
        expense: on loopback the sender pays for the receiver's wakeup) and reads one frame per
        syscall; pausing ``pace`` seconds per iteration lets frames pile up in the socket, so
        the client reads many per syscall and the server never wakes it. It adds at most
        ``pace`` to every latency measured, the same for every server.
        """
        if self.pace_seconds <= 0:
            self.pacing = False
            return
        time.sleep(self.pace_seconds)
        self.loop.call_soon(self.pace)

    def set_pace(self, seconds: float) -> None:
        """Pause ``seconds`` per loop iteration from now on (0: not at all)."""
        self.pace_seconds = seconds
        if seconds > 0 and not self.pacing:
            self.pacing = True
            self.loop.call_soon(self.pace)

    async def serve(self) -> None:
        self.set_pace(self.pace_seconds)
        self.loop.set_exception_handler(quiet_given_up_handshakes)
        # A thread of its own reads the pipe: the loop's add_reader would make the descriptor
        # non-blocking (libuv does), and a long command would then arrive in pieces.
        threading.Thread(target=self.read_commands, name="commands", daemon=True).start()
        try:
            await self.stopped.wait()
        finally:
            self.abort_all()

    def read_commands(self) -> None:
        while True:
            try:
                ident, name, arguments = self.pipe.recv()
            except (EOFError, OSError):
                self.loop.call_soon_threadsafe(self.stopped.set)
                return
            self.loop.call_soon_threadsafe(self.spawn, self.execute(ident, name, arguments))

    def spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def execute(self, ident: int, name: str, arguments: dict[str, Any]) -> None:
        handler: Callable[..., Any] | None = getattr(self, "cmd_" + name, None)
        try:
            if handler is None:
                raise ValueError(f"unknown command {name!r}")
            reply: Reply = {"ok": True, **(await handler(**arguments))}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            self.pipe.send((ident, reply))

    # --- counters -------------------------------------------------------------------------------

    def record(self, elapsed: int) -> None:
        self.hist[latency.bucket(elapsed)] += 1

    def note_leave(self) -> None:
        if self.leave_at is None:
            self.leave_at = time.monotonic()

    def note_error(self, sample: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(sample)

    # --- commands -------------------------------------------------------------------------------

    async def cmd_connect(
        self,
        port: int,
        members: list[tuple[str, str, str, str]],
        query: str,
        deflate: bool,
        concurrency: int,
        wait: float,
        rcvbuf: int,
        endpoint: str = V1,
    ) -> Reply:
        """Open ``(rooms, name, role, source address)`` members, each up to its last welcome.

        Role ``member``, ``publisher`` (the one ``publish`` drives) or ``slow`` (a bare socket, v1
        only). On v1 ``rooms`` is the room of the connection; on ``/ws`` the rooms (comma-separated,
        maybe none) it joins once connected, all at once.
        """
        gate = asyncio.Semaphore(max(1, concurrency))
        failures: list[str] = []
        headers = {"Sec-WebSocket-Extensions": DEFLATE_OFFER} if deflate else None

        async def open_one(rooms: str, name: str, role: str, source: str) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(wait):
                        if role == "slow":
                            target = path(V1, rooms, name, query)
                            self.slow.append(await self.open_slow(port, target, rcvbuf, source))
                            return
                        client = await self.open_client(port, endpoint, rooms, name, query, headers, wait, source)
                        if role == "publisher":
                            self.publisher = client
                except Exception as exc:
                    failures.append(failure(exc))

        started = time.monotonic()
        await asyncio.gather(*(open_one(*member) for member in members))
        finished = time.monotonic()
        if self.slow and self.slow_watch is None:
            self.slow_watch = self.loop.create_task(self.watch_slow())
        return {
            "failed": len(failures),
            "failures": failures[:ERROR_SAMPLES],
            "started": started,
            "finished": finished,
        }

    async def open_client(
        self,
        port: int,
        endpoint: str,
        rooms: str,
        name: str,
        query: str,
        headers: dict[str, str] | None,
        handshake_wait: float,
        source: str,
    ) -> Client:
        """One member, up to its welcome (v1), or its hello and then a welcome in each of ``rooms`` (``/ws``)."""
        client: Client | None = None
        joined = rooms_of(rooms)

        def factory() -> Client:
            nonlocal client
            client = Client(self, endpoint)
            return client

        await ws_connect(
            factory,
            f"ws://127.0.0.1:{port}{path(endpoint, rooms, name, query)}",
            websocket_handshake_timeout=handshake_wait,
            extra_headers=headers,
            read_buffer_init_size=READ_BUFFER,
            max_frame_size=64 * 1024 * 1024,
            use_aiofastnet=False,  # uvloop's own transports read in C; aiofastnet's go through add_reader
            local_addr=(source, 0),
        )
        assert client is not None
        try:
            await client.ready
            if endpoint == WS:
                client.room = joined[0] if joined else None
                await client.join(joined)
        except BaseException:
            client.abort()
            raise
        self.clients.append(client)
        self.named[name] = client
        return client

    async def cmd_join_timed(
        self,
        port: int,
        members: list[tuple[str, str, str, str]],
        query: str,
        deflate: bool,
        wait: float,
        endpoint: str,
    ) -> Reply:
        """Join each member's rooms, one member after the other, timing each: ``seconds`` for each member.

        ``(rooms, name, role, source address)`` as for ``connect``. On v1 the member opens one
        connection per room, all at once, and is timed until every one has its welcome (handshakes
        included); on ``/ws`` its connection must be open already (``connect`` with no rooms), and
        it is timed from sending its ``join`` frames, all at once, until every welcome is back. The
        members stay connected. The pause per loop iteration (``pace``) is off meanwhile: it would
        add to each wait for a frame.
        """
        headers = {"Sec-WebSocket-Extensions": DEFLATE_OFFER} if deflate else None
        seconds: list[float] = []
        failures: list[str] = []
        pace = self.pace_seconds
        self.set_pace(0.0)
        try:
            for rooms, name, _role, source in members:
                joined = rooms_of(rooms)
                try:
                    async with asyncio.timeout(wait):
                        if endpoint == WS:
                            client = self.named[name]
                            started = time.perf_counter()
                            await client.join(joined)
                            seconds.append(time.perf_counter() - started)
                            client.room = joined[0] if joined else None
                        else:
                            started = time.perf_counter()
                            opening = [
                                self.open_client(port, V1, room, name, query, headers, wait, source) for room in joined
                            ]
                            results = await asyncio.gather(*opening, return_exceptions=True)
                            elapsed = time.perf_counter() - started
                            errors = [result for result in results if isinstance(result, BaseException)]
                            if errors:
                                raise errors[0]
                            seconds.append(elapsed)
                except Exception as exc:
                    failures.append(f"{name}: {failure(exc)}")
        finally:
            self.set_pace(pace)
        return {"seconds": seconds, "failed": len(failures), "failures": failures[:ERROR_SAMPLES]}

    async def open_slow(self, port: int, path: str, rcvbuf: int, source: str) -> SlowClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            # Before connect, so that the window the server sees is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await self.loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await self.loop.sock_sendall(sock, request.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += await self.read(sock)
            head, data = data.split(b"\r\n\r\n", 1)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
            while (size := frame_length(data)) is None or len(data) < size:
                data += await self.read(sock)
            if b'"welcome"' not in data[:size]:
                raise ConnectionError(f"first frame is not a welcome: {data[:80]!r}")
        except BaseException:
            sock.close()
            raise
        return SlowClient(sock)

    async def read(self, sock: socket.socket) -> bytes:
        chunk = await self.loop.sock_recv(sock, 4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        return chunk

    async def watch_slow(self) -> None:
        while self.slow:
            now = time.monotonic()
            for slow in self.slow:
                if slow.closed_at is None and slow.tcp_state() != TCP_ESTABLISHED:
                    slow.closed_at = now
            await asyncio.sleep(SLOW_POLL)

    async def cmd_stats(self, reset: bool = False) -> Reply:
        """Counters so far; ``reset`` also empties the latency histogram (for a fresh measurement window)."""
        received = [client.received for client in self.clients]
        histogram = latency.sparse(self.hist)
        if reset:
            self.hist[:] = [0] * latency.SIZE
        state = dict(self.publish_state)
        return {
            "open": sum(1 for client in self.clients if not client.closed),
            "received": sum(received),
            "received_each": received,
            "sent": sum(client.sent for client in self.clients),
            "open_sent": self.open_sent,
            "open_skipped": self.open_skipped,
            "hist": histogram,
            "errors": self.errors,
            "error_samples": list(self.error_samples),
            "close_codes": dict(self.close_codes),
            "disconnected": self.disconnected,
            "leave_at": self.leave_at,
            "slow_closed_at": [slow.closed_at for slow in self.slow],
            "publish": state,
        }

    async def cmd_publish(self, count: int, window: int, size: int, ack: bool, stall: float) -> Reply:
        """Start the closed-loop publisher: at most ``window`` messages without their ack (or echo)."""
        if self.publisher is None:
            raise RuntimeError("this worker has no publisher")
        await self.halt_publisher()
        self.stop_publishing = False
        self.publish_state = {"sent": 0, "stalled": False, "finished": False}
        self.publishing = self.loop.create_task(self.publish(self.publisher, count, window, size, ack, stall))
        return {}

    async def publish(self, client: Client, count: int, window: int, size: int, ack: bool, stall: float) -> None:
        state = self.publish_state
        state["started"] = time.monotonic()
        base = client.acks if ack else client.received

        def done() -> int:
            return (client.acks if ack else client.received) - base

        try:
            while state["sent"] < count and not self.stop_publishing and not client.closed:
                while state["sent"] - done() >= window and not self.stop_publishing and not client.closed:
                    client.waiter = self.loop.create_future()
                    try:
                        async with asyncio.timeout(stall):
                            await client.waiter
                    except TimeoutError:
                        state["stalled"] = True
                        return
                if self.stop_publishing or client.closed:
                    break
                client.send_message(size, ack)
                state["sent"] += 1
                if state["sent"] % window == 0:
                    await asyncio.sleep(0)  # let the loop read between bursts
        finally:
            state["finished"] = True
            state["ended"] = time.monotonic()

    async def halt_publisher(self) -> None:
        self.stop_publishing = True
        if self.publisher is not None:
            self.publisher.wake()
        if self.publishing is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await asyncio.shield(self.publishing)
            self.publishing.cancel()
            self.publishing = None

    async def cmd_stop_publishing(self) -> Reply:
        await self.halt_publisher()
        return {"publish": dict(self.publish_state)}

    async def cmd_rate(self, per_client: float, size: int) -> Reply:
        """Every open client of this process publishes ``per_client`` messages a second, open loop (0 stops)."""
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker
            self.ticker = None
        publishers = [client for client in self.clients if not client.closed]
        if per_client > 0 and publishers:
            self.ticker = self.loop.create_task(self.tick(publishers, per_client * len(publishers), size))
        return {}

    async def tick(self, publishers: list[Client], rate: float, size: int) -> None:
        count = len(publishers)
        turn = 0
        start = self.loop.time()
        sent = 0
        while True:
            await asyncio.sleep(TICK)
            due = int((self.loop.time() - start) * rate) - sent
            lag = int(rate * MAX_LAG)
            if due > lag:
                self.open_skipped += due - lag
                sent += due - lag
                due = lag
            for _ in range(due):
                publishers[turn].send_message(size, False)
                turn = turn + 1 if turn + 1 < count else 0
            sent += due
            self.open_sent += due

    # --- storm (storm_client.py) ---------------------------------------------------------------

    async def cmd_storm_connect(
        self,
        port: int,
        members: list[tuple[str, str, bool, str]],
        query: str,
        deflate: bool,
        concurrency: int,
        wait: float,
        acks: bool,
    ) -> Reply:
        """Open storm members ``(room, name, publisher, source address)``, each up to its welcome."""
        if self.storm is None:
            self.storm = Storm(port, query, deflate, wait, acks)
        return await self.storm.connect(members, concurrency)

    def the_storm(self) -> Storm:
        """This process's storm members (none: an empty storm, when there were fewer members than processes)."""
        if self.storm is None:
            self.storm = Storm(0, "", False, 1.0, True)
        return self.storm

    async def cmd_storm_publish(self, interval: float, size: int) -> Reply:
        """Every publisher here sends a message each ``interval`` s while welcomed; members record what arrives."""
        if self.storm is not None:
            self.storm.start_publishing(interval, size)
        return {}

    async def cmd_storm_stop_publishing(self) -> Reply:
        if self.storm is not None:
            self.storm.stop_publishing()
        return {}

    async def cmd_storm_arm(self, at: float, since_ns: int, cut: bool) -> Reply:
        """The drop is now: count from here; with ``cut``, reset every connection (members then come back)."""
        storm = self.the_storm()
        storm.arm(at, since_ns)
        return {"cut": storm.cut() if cut else 0}

    async def cmd_storm_stats(self) -> Reply:
        return self.the_storm().stats()

    async def cmd_storm_report(self) -> Reply:
        return self.the_storm().report()

    async def cmd_storm_check(self, accepted: dict[str, list[int]]) -> Reply:
        return self.the_storm().check(accepted)

    # --- soak (soak_client.py) ----------------------------------------------------------------

    async def cmd_soak_join(
        self, port: int, query: str, wait: float, process: int, size: int, members: list[tuple[str, str, str]]
    ) -> Reply:
        """Open the steady members ``(room, name, source address)`` here, each up to its welcome."""
        if self.soak is None:
            self.soak = Soak(port, query, wait, process, size)
        return await self.soak.join_steady(members)

    def the_soak(self) -> Soak:
        if self.soak is None:
            raise RuntimeError("no soak here: soak_join comes first")
        return self.soak

    async def cmd_soak_fill(self, rooms: list[tuple[str, str]], count: int, within: float) -> Reply:
        return await self.the_soak().fill(rooms, count, within)

    async def cmd_soak_start(
        self,
        churners: list[tuple[str, str]],
        rooms: list[str],
        mix: dict[str, float],
        messages: tuple[int, int],
        stall: tuple[float, float],
    ) -> Reply:
        """Start the churners ``(name, source address)`` here; they loop until ``soak_stop``."""
        self.the_soak().start(churners, rooms, mix, messages, stall)
        return {}

    async def cmd_soak_stats(self) -> Reply:
        return self.the_soak().stats()

    async def cmd_soak_stop(self, within: float) -> Reply:
        return await self.the_soak().stop(within)

    async def cmd_soak_report(self) -> Reply:
        return self.the_soak().report()

    async def cmd_disconnect(self, within: float) -> Reply:
        """Close every connection (close frame, then drop the transport) and forget it."""
        await self.halt_publisher()
        await self.cmd_rate(0, 0)
        self.abort_all()
        pending = [client.gone for client in self.clients if not client.gone.done()]
        if pending:
            await asyncio.wait(pending, timeout=within)
        self.reset()
        return {}

    def abort_all(self) -> None:
        if self.storm is not None:
            self.storm.close()
            self.storm = None
        if self.soak is not None:
            self.soak.close()
            self.soak = None
        for client in self.clients:
            client.abort()
        for slow in self.slow:
            slow.abort()
        self.slow = []
        if self.slow_watch is not None:
            self.slow_watch.cancel()
            self.slow_watch = None

    def reset(self) -> None:
        self.clients = []
        self.named = {}
        self.publisher = None
        self.hist[:] = [0] * latency.SIZE
        self.errors = 0
        self.error_samples = []
        self.close_codes = Counter()
        self.disconnected = 0
        self.leave_at = None
        self.publish_state = {}
        self.open_sent = 0
        self.open_skipped = 0

    async def cmd_quit(self) -> Reply:
        self.loop.call_soon(self.stopped.set)
        return {}


def quiet_given_up_handshakes(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler, silent about the handshake timeouts of attempts given up before them.

    An attempt whose own wait ran out (a storm member's) stopped awaiting picows' handshake; when
    picows' timeout then fails that handshake, nobody retrieves the exception.
    """
    exception = context.get("exception")
    if isinstance(exception, TimeoutError) and "handshake" in str(exception):
        return
    loop.default_exception_handler(context)


def failure(exc: BaseException) -> str:
    """What went wrong, in one line."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def worker_main(pipe: Connection, pace: float = PACE) -> None:
    """The entry point of a client process (its open-file limit is the harness's, raised by ``cli.main``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the harness's to handle: it stops us

    async def run() -> None:
        await Worker(pipe, pace).serve()

    uvloop.run(run())
