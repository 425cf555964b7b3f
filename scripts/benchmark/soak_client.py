"""The ``soak`` scenario in a client process: steady members that stay, churners that come and go.

A steady member is one v1 connection (``/ws/{room}?name=steadyN``) that stays for the whole run
and records the tag of every message it receives, in order of arrival. A churner loops until told
to stop: it connects to a random room, waits for its ``welcome``, sends 1-5 messages with a
``ref``, waits for their ``ack`` frames, then leaves in one of three ways:

- ``clean``: a close frame (1000), then it waits for the server's close frame and the end of the
  connection;
- ``reset``: ``SO_LINGER`` 0, then close: the server gets a TCP reset, no close handshake;
- ``stall``: it stops reading for a short pause (the server's frames pile up in the socket), then
  sends a close frame and closes the socket without reading the answer (with unread data pending,
  the kernel resets the connection).

A filler connection per room sends ``fill`` messages before the churn (so that every room holds a
full history from the start) and leaves cleanly. Every message's text starts with a 20-digit tag
unique in the run (the client process's number, then a counter); each ``ack`` gives the seq the
server gave it: ``(room, seq, tag)`` of every acknowledged message is what the harness checks the
steady members against. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from benchmark import storm_client

Reply = dict[str, Any]
TAG_DIGITS = 20
PROCESS_TAGS = 10**15
"""Tags of client process i are ``(i + 1) * PROCESS_TAGS + n``: unique across the run's processes."""
PADDING = b"x" * 65536
READ_BUFFER = 8192
CLEAN = "clean"
RESET = "reset"
STALL = "stall"
LEAVES = (CLEAN, RESET, STALL)
ACK_WAIT = 10.0
"""The most a churner waits for the acks of its messages before it leaves all the same."""
CLOSE_WAIT = 5.0
"""The most a clean leave waits for the server's close frame and the end of the connection."""
RETRY_PAUSE = 0.5
"""A churner whose connection failed waits this long before its next cycle."""
FILL_WINDOW = 50
"""Messages a filler keeps unacknowledged."""
ERROR_SAMPLES = 5

_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_MESSAGE = b'{"type":"message"'
_ACK = b'{"type":"ack"'
_WELCOME = b'{"type":"welcome"'
_ERROR = b'{"type":"error"'
_TEXT_KEY = b'"text":"'


def soak_path(room: str, name: str, query: str) -> str:
    return f"/ws/{room}?name={name}{query}"


def message_frame(tag: int, size: int, ref: int) -> bytes:
    """A message whose text is ``tag`` (20 digits) padded to ``size`` characters, asking for an ack."""
    text = b"%020d" % tag + PADDING[: max(0, size - TAG_DIGITS)]
    return b'{"type":"message","text":"%s","ref":%d}' % (text, ref)


def tag_of(data: bytes) -> int | None:
    """The tag at the start of a message frame's text; None when it has none (nobody here sent it)."""
    start = data.find(_TEXT_KEY)
    if start < 0:
        return None
    digits = data[start + len(_TEXT_KEY) : start + len(_TEXT_KEY) + TAG_DIGITS]
    return int(digits) if len(digits) == TAG_DIGITS and digits.isdigit() else None


def pick_leave(mix: dict[str, float], rand: random.Random) -> str:
    """One way to leave, drawn with the mix's weights."""
    kinds = [kind for kind in LEAVES if mix.get(kind, 0) > 0]
    return rand.choices(kinds, weights=[mix[kind] for kind in kinds])[0]


def classify(exc: BaseException) -> str:
    """Why an attempt failed, in a word or two."""
    status = getattr(getattr(exc, "response", None), "status", None)
    if status is not None:
        return f"HTTP {int(status)}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionError):
        return "closed before the welcome"
    return type(exc).__name__


class Conn(WSListener):
    """One connection: ``ready`` at its welcome, ``gone`` at its end; acks and messages go to the soak."""

    def __init__(self, soak: Soak, room: str, steady: bool = False) -> None:
        super().__init__()
        self.soak = soak
        self.room = room
        self.steady = steady
        self.transport: WSTransport | None = None
        loop = soak.loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.acked = asyncio.Event()
        self.pending: dict[int, int] = {}
        """ref -> tag of the messages sent and not acknowledged yet."""
        self.ref = 0
        self.tags: list[int] = []
        """A steady member's: the tags of the messages it received, in order of arrival."""
        self.leaving = False
        self.welcomed = False
        self.code: int | None = None
        self.fragments: list[bytes] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.leaving:  # its attempt timed out during the handshake: picows completes it all the same
            transport.disconnect(graceful=False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == _TEXT and frame.fin:
            self.received(frame.get_payload_as_bytes())
        elif kind == _TEXT:
            self.fragments = [frame.get_payload_as_bytes()]
        elif kind == _CONTINUATION and self.fragments is not None:
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self.received(data)
        elif kind == _CLOSE:
            code = frame.get_close_code()
            self.code = int(code.value) if isinstance(code, WSCloseCode) else int(code)
            if not self.leaving:
                with contextlib.suppress(Exception):
                    transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the welcome (code {self.code})"))
            self.ready.exception()  # retrieved: the attempt may have given up already
        if not self.gone.done():
            self.gone.set_result(None)
        self.acked.set()
        if self.steady and self.welcomed and not self.soak.closed:
            self.soak.steady_lost += 1

    def received(self, data: bytes) -> None:
        """One WebSocket message: one frame, or several, one per line (``batch=1``)."""
        if b"\n" in data:
            for line in data.split(b"\n"):
                if line:
                    self.frame(line)
        else:
            self.frame(data)

    def frame(self, data: bytes) -> None:
        if data.startswith(_MESSAGE):
            if self.steady:
                tag = tag_of(data)
                if tag is None:
                    self.soak.foreign += 1
                else:
                    self.tags.append(tag)
        elif data.startswith(_ACK):
            self.ack(data)
        elif data.startswith(_WELCOME):
            self.welcomed = True
            if not self.ready.done():
                self.ready.set_result(None)
        elif data.startswith(_ERROR):
            self.soak.note_error(data)

    def ack(self, data: bytes) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.soak.note_error(data)
            return
        tag = self.pending.pop(frame.get("ref"), None)
        if tag is None:
            return
        self.soak.accepted.append((self.room, int(frame["seq"]), tag))
        self.soak.acked += 1
        self.acked.set()

    def send(self, size: int) -> None:
        """One message with a fresh tag and ref."""
        if self.transport is None:
            return
        self.ref += 1
        tag = self.soak.next_tag()
        self.pending[self.ref] = tag
        self.acked.clear()
        self.transport.send(_TEXT, message_frame(tag, size, self.ref))
        self.soak.sent += 1

    def reset(self) -> None:
        """Drop the connection with a TCP reset (``SO_LINGER`` 0), no close handshake."""
        self.leaving = True
        if self.transport is not None:
            storm_client.reset(self.transport)

    def close(self) -> None:
        """Send a close frame (1000); the connection ends when the server answers (``on_ws_frame``)."""
        self.leaving = True
        if self.transport is not None:
            self.transport.send_close(WSCloseCode.OK)

    def stop_reading(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.underlying_transport.pause_reading()

    def abort(self) -> None:
        self.leaving = True
        if self.transport is not None:
            self.transport.disconnect(graceful=False)


class Soak:
    """The steady members and churners of one client process, and what they counted."""

    def __init__(self, port: int, query: str, wait: float, process: int, size: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.query = query
        self.wait = wait
        self.size = size
        self.first_tag = (process + 1) * PROCESS_TAGS
        self.tags_used = 0
        self.random = random.Random()
        self.closed = False
        self.running = False
        self.steady: list[tuple[str, Conn]] = []
        """(name, connection) of every steady member."""
        self.churning: set[asyncio.Task[None]] = set()
        self.accepted: list[tuple[str, int, int]] = []
        """(room, seq, tag) of every acknowledged message, fill included."""
        self.sent = 0
        self.acked = 0
        self.unacked = 0
        """Messages of churners that left without their ack (after ACK_WAIT, or when the server closed first)."""
        self.cycles = 0
        self.active = 0
        self.leaves: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        """How churners' connections ended otherwise than as they meant: close codes from the server."""
        self.steady_lost = 0
        self.foreign = 0
        self.errors = 0
        self.error_samples: list[str] = []

    def next_tag(self) -> int:
        self.tags_used += 1
        return self.first_tag + self.tags_used

    def note_error(self, data: bytes) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(data[:200].decode("utf-8", "replace"))

    async def open(self, conn: Conn, name: str, source: str) -> None:
        """Connect ``conn`` as ``name`` from ``source``, up to its welcome (``wait`` seconds in all)."""
        url = f"ws://127.0.0.1:{self.port}{soak_path(conn.room, name, self.query)}"
        try:
            async with asyncio.timeout(self.wait):
                await ws_connect(
                    lambda: conn,
                    url,
                    websocket_handshake_timeout=self.wait,
                    read_buffer_init_size=READ_BUFFER,
                    use_aiofastnet=False,
                    local_addr=(source, 0),
                )
                await conn.ready
        except BaseException:
            conn.abort()
            raise

    # --- steady members and fillers ---------------------------------------------------------------

    async def join_steady(self, members: list[tuple[str, str, str]]) -> Reply:
        """Open ``(room, name, source address)`` steady members, each up to its welcome."""
        failures: list[str] = []

        async def join(room: str, name: str, source: str) -> None:
            conn = Conn(self, room, steady=True)
            try:
                await self.open(conn, name, source)
            except Exception as exc:
                failures.append(f"{name}: {classify(exc)}")
                return
            self.steady.append((name, conn))

        await asyncio.gather(*(join(*member) for member in members))
        return {"failed": len(failures), "failures": failures[:ERROR_SAMPLES]}

    async def fill(self, rooms: list[tuple[str, str]], count: int, within: float) -> Reply:
        """``count`` messages into each of ``(room, source address)``, at most FILL_WINDOW unacknowledged."""

        async def fill_one(room: str, source: str) -> None:
            conn = Conn(self, room)
            await self.open(conn, f"filler-{room}", source)
            sent = 0
            while sent < count or conn.pending:
                while sent < count and len(conn.pending) < FILL_WINDOW:
                    conn.send(self.size)
                    sent += 1
                await conn.acked.wait()
                conn.acked.clear()
                if conn.gone.done():
                    raise ConnectionError(f"the filler of {room} was closed (code {conn.code})")
            conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.gone), CLOSE_WAIT)
            conn.abort()

        async with asyncio.timeout(within):
            await asyncio.gather(*(fill_one(room, source) for room, source in rooms))
        return {"acked": self.acked}

    # --- churners ---------------------------------------------------------------------------------

    def start(
        self,
        churners: list[tuple[str, str]],
        rooms: list[str],
        mix: dict[str, float],
        messages: tuple[int, int],
        stall: tuple[float, float],
    ) -> None:
        """Start every ``(name, source address)`` churner looping over ``rooms``."""
        self.running = True
        for name, source in churners:
            task = self.loop.create_task(self.churn(name, source, rooms, mix, messages, stall))
            self.churning.add(task)
            task.add_done_callback(self.churning.discard)

    async def churn(
        self,
        name: str,
        source: str,
        rooms: list[str],
        mix: dict[str, float],
        messages: tuple[int, int],
        stall: tuple[float, float],
    ) -> None:
        while self.running:
            conn = Conn(self, self.random.choice(rooms))
            self.active += 1
            try:
                await self.cycle(conn, name, source, mix, messages, stall)
            except Exception as exc:
                self.failures[classify(exc)] += 1
                conn.abort()
                await asyncio.sleep(RETRY_PAUSE)
            finally:
                self.active -= 1
                if not conn.gone.done():
                    conn.abort()  # cancelled mid-cycle: nothing stays open

    async def cycle(
        self,
        conn: Conn,
        name: str,
        source: str,
        mix: dict[str, float],
        messages: tuple[int, int],
        stall: tuple[float, float],
    ) -> None:
        """One connection of a churner: connect, send, wait for the acks, leave."""
        await self.open(conn, name, source)
        for _ in range(self.random.randint(*messages)):
            conn.send(self.size)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_WAIT):
                while conn.pending and not conn.gone.done():
                    await conn.acked.wait()
                    conn.acked.clear()
        self.unacked += len(conn.pending)
        if conn.gone.done():
            self.closes[str(conn.code) if conn.code is not None else "no close frame"] += 1
            self.cycles += 1
            return
        leave = pick_leave(mix, self.random)
        if leave == RESET:
            conn.reset()
        elif leave == CLEAN:
            conn.close()
        else:
            conn.stop_reading()
            await asyncio.sleep(self.random.uniform(*stall))
            conn.close()
            if conn.transport is not None:
                conn.transport.disconnect(graceful=True)
        try:
            await asyncio.wait_for(asyncio.shield(conn.gone), CLOSE_WAIT)
        except TimeoutError:
            self.failures[f"{leave}: no end within {CLOSE_WAIT:g} s"] += 1
            conn.abort()
        self.leaves[leave] += 1
        self.cycles += 1

    async def stop(self, within: float) -> Reply:
        """Let every churner finish its cycle (at most ``within`` s, then cancel it): the counts."""
        self.running = False
        late: set[asyncio.Task[None]] = set()
        if self.churning:
            _, late = await asyncio.wait(list(self.churning), timeout=within)
            for task in late:
                task.cancel()
        return {**self.stats(), "cancelled": len(late)}

    # --- results ----------------------------------------------------------------------------------

    def stats(self) -> Reply:
        return {
            "cycles": self.cycles,
            "sent": self.sent,
            "acked": self.acked,
            "active": self.active,
            "received": sum(len(conn.tags) for _, conn in self.steady),
            "steady_lost": self.steady_lost,
        }

    def report(self) -> Reply:
        """The counts, every acknowledged message, and what each steady member received."""
        return {
            **self.stats(),
            "unacked": self.unacked,
            "leaves": dict(self.leaves),
            "failures": dict(self.failures),
            "closes": dict(self.closes),
            "errors": self.errors,
            "error_samples": list(self.error_samples),
            "foreign": self.foreign,
            "accepted": self.accepted,
            "steady": [(conn.room, name, conn.tags) for name, conn in self.steady],
        }

    def close(self) -> None:
        """Stop churning; drop every connection."""
        self.closed = True
        self.running = False
        for task in self.churning:
            task.cancel()
        for _, conn in self.steady:
            conn.abort()
        self.steady = []
