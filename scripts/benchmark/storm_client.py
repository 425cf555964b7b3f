"""The ``storm`` scenario in a client process: members that all drop at once and come back like the web client.

A storm member is one v1 connection (``/ws/{room}?name=N``) whose state outlives its connections:
the last ``seq`` it saw and the ``epoch`` of its last welcome. When its connection ends (a close
from the server, a reset, or the harness cutting it) it reconnects as ``chat/static/protocol.js``
does, with ``since`` and ``epoch`` in the address:

- the first attempt after a drop waits 0.15-0.75 s (uniform: the web client's spread after a 1012,
  used here after every drop so that the drops and the servers compare), 2-4 s after a 1013;
- a failed attempt (refused, timed out, an HTTP refusal such as 429 or 503, closed before its
  welcome) waits the web client's backoff: half of ``0.5 s x 2^attempt`` (at most 15 s) plus a
  random part of the other half; at least 2-4 s after a 1013; at most 0.3-0.6 s when the server
  answered HTTP (the web client asks ``/healthz`` after a failed handshake and comes back soon
  when it answers: a refusal with a status is such an answer, a refused or timed-out connection is not).

Every attempt has ``wait`` seconds (the web client's 10 s for a first frame) for the TCP
connection, the handshake and the welcome together.

One member of each room is its publisher: while it is welcomed it sends a message every
``interval`` seconds (each room at its own phase), whose text starts with the send time
(``time.monotonic_ns()``, 20 digits) and which carries a ``ref``; the server's ``ack`` (chat) or the
publisher's own echo (the references, which have no acks) says the server accepted it. A message
is known everywhere by its stamp: a room has one publisher, so a stamp names one message.

What a member records: every message it receives, live or in a welcome's ``history``, by stamp
(from the moment publishing starts); the latency of each message stamped after the drop, taken
when it arrives (a message published while the member was away arrives in the welcome after its
reconnect: its latency includes the time away); when its first welcome after the drop came, and
whether it said ``recovered``. Counted from the drop on: every frame the server sent, by type, and
its bytes on the wire (payload and frame header).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from benchmark import latency

Reply = dict[str, Any]
STAMP_DIGITS = 20
PADDING = b"x" * 65536
READ_BUFFER = 8192
DEFLATE_TAIL = b"\x00\x00\xff\xff"
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
KINDS = ("welcome", "join", "leave", "message", "ack", "other")
"""The frame types counted apart (``other``: typing, pong, error, anything else)."""
KIND_OF = {kind.encode(): kind for kind in KINDS[:-1]}
BACKOFF_BASE = 0.5
BACKOFF_CAP = 15.0
DROP_SPREAD = (0.15, 0.75)
"""Seconds after a drop before the first attempt: uniform over this range."""
BUSY_WAIT = (2.0, 4.0)
"""After a 1013 (try again later): at least this long, uniform."""
SOON = (0.3, 0.6)
"""At most this long when the server answered the failed attempt with an HTTP status."""
TRY_AGAIN_LATER = 1013
MAX_LAG = 0.5
"""A publisher's tick this late (its process was busy) is skipped rather than sent in a burst."""
ERROR_SAMPLES = 5
CONNECT_ATTEMPTS = 3
"""Attempts of each member to join before the drop (a refusal then, 1013 say, is retried with the backoff)."""

_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_MESSAGE = b'{"type":"message"'
_TYPE = b'{"type":"'
_SEQ = b'"seq":'
_TEXT_KEY = b'"text":"'
_monotonic_ns = time.monotonic_ns


def backoff(attempt: int, rand: Callable[[], float]) -> float:
    """The web client's backoff: half of the step fixed, the other half random; the step doubles up to the cap."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt)
    return step / 2 + rand() * (step / 2)


def retry_delay(attempt: int, code: int | None, soon: bool, rand: Callable[[], float]) -> float:
    """Seconds before attempt ``attempt + 1`` after a drop (attempt 0) or a failed attempt, as protocol.js waits."""
    delay = backoff(attempt, rand)
    if attempt == 0 and code != TRY_AGAIN_LATER:
        delay = DROP_SPREAD[0] + rand() * (DROP_SPREAD[1] - DROP_SPREAD[0])
    if code == TRY_AGAIN_LATER:
        delay = max(delay, BUSY_WAIT[0] + rand() * (BUSY_WAIT[1] - BUSY_WAIT[0]))
    if soon:
        delay = min(delay, SOON[0] + rand() * (SOON[1] - SOON[0]))
    return delay


def wire_size(payload: int) -> int:
    """Bytes of a server frame (unmasked) with a payload of ``payload`` bytes."""
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


def storm_path(room: str, name: str, seq: int, epoch: str | None, query: str) -> str:
    """A v1 member's address: ``since``/``epoch`` once a welcome gave an epoch (the references give none)."""
    if epoch is None:
        return f"/ws/{room}?name={name}{query}"
    return f"/ws/{room}?name={name}&since={seq}&epoch={epoch}{query}"


def classify(exc: BaseException, code: int | None) -> tuple[str, int | None, bool]:
    """A failed attempt: (reason, close code, whether the server answered it with HTTP)."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused", None, False
    response = getattr(exc, "response", None)
    status = getattr(response, "status", None)
    if status is not None:
        return f"HTTP {int(status)}", None, True
    if code is not None:
        return f"closed {code}", code, False
    if isinstance(exc, TimeoutError):
        return "timeout", None, False
    if isinstance(exc, ConnectionResetError):
        return "reset", None, False
    if isinstance(exc, ConnectionError):
        return "closed without a close frame", None, False
    return type(exc).__name__, None, False


class Outbox:
    """What a room's publisher sent and what the server accepted."""

    __slots__ = ("accepted", "pending", "ref", "sent", "skipped", "unechoed")

    def __init__(self) -> None:
        self.ref = 0
        self.sent = 0
        self.skipped = 0
        """Ticks while the publisher was away (not welcomed), or too late to send."""
        self.pending: dict[int, int] = {}
        """ref -> stamp of messages sent and not acknowledged yet (chat)."""
        self.unechoed: set[int] = set()
        """Stamps of messages sent and not echoed back yet (the references)."""
        self.accepted: list[tuple[str | None, int]] = []
        """(epoch of the connection that accepted it, stamp), in the order accepted."""


class Member:
    """One member of one room, across its connections."""

    __slots__ = (
        "attempts",
        "dropped_at",
        "epoch",
        "link",
        "name",
        "newest",
        "outbox",
        "recovered",
        "room",
        "seq",
        "source",
        "stamps",
        "timer",
        "welcomed_at",
    )

    def __init__(self, room: str, name: str, source: str, publisher: bool) -> None:
        self.room = room
        self.name = name
        self.source = source
        self.outbox = Outbox() if publisher else None
        self.seq = 0
        self.epoch: str | None = None
        self.link: Link | None = None
        """The connection it is welcomed on; None while it is away."""
        self.attempts = 0
        """Attempts since the last welcome (the backoff's exponent)."""
        self.timer: asyncio.TimerHandle | None = None
        self.dropped_at: float | None = None
        """When it lost its connection after the drop (for a restart: when the server closed it, or reset it)."""
        self.welcomed_at: float | None = None
        """When its first welcome after the drop came."""
        self.recovered: bool | None = None
        """None until a welcome after the drop; then whether every one said ``recovered: true``."""
        self.stamps: list[int] = []
        """Stamps of the messages received since publishing started, in order of arrival."""
        self.newest = 0


class Link(WSListener):
    """One connection of a member: ``ready`` is done at its welcome."""

    def __init__(self, storm: Storm, member: Member) -> None:
        super().__init__()
        self.storm = storm
        self.member = member
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = storm.loop.create_future()
        self.code: int | None = None
        self.was_cut = False
        self.dead = False
        """Given up (its attempt failed): whatever it still brings is ignored, and it is reset once it connects."""
        self.inflater: Any = None
        self.fragments: list[bytes] | None = None
        self.fragments_compressed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.dead:  # its attempt timed out during the handshake: picows completes it all the same
            transport.disconnect(graceful=False)
            return
        if "permessage-deflate" in transport.response.headers.get("Sec-WebSocket-Extensions", ""):
            self.inflater = zlib.decompressobj(-15)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.dead:
            return
        kind = frame.msg_type
        if kind == _TEXT and frame.fin and not frame.rsv1:
            data = frame.get_payload_as_bytes()
            self.storm.received(self, data, wire_size(len(data)))
            return
        if kind == _CLOSE:
            code = frame.get_close_code()
            self.code = int(code.value) if isinstance(code, WSCloseCode) else int(code)
            with contextlib.suppress(Exception):
                transport.send_close(code)
            transport.disconnect()
            return
        if kind != _TEXT and kind != _CONTINUATION:
            return  # picows answers pings itself
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
        wire = wire_size(len(data))
        if self.fragments_compressed and self.inflater is not None:
            data = self.inflater.decompress(data + DEFLATE_TAIL)
        self.storm.received(self, data, wire)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.storm.disconnected(self)

    def fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved: the attempt may have timed out already

    def cut(self) -> None:
        """Drop the connection as a network cut does for the client: a reset, no close handshake."""
        self.was_cut = True
        if self.transport is not None:
            reset(self.transport)

    def abort(self) -> None:
        """Give the connection up: reset it now, or as soon as its handshake completes."""
        self.dead = True
        if self.transport is not None:
            self.transport.disconnect(graceful=False)


def reset(transport: WSTransport) -> None:
    """Drop the connection with a TCP reset (``SO_LINGER`` 0), no close handshake."""
    with contextlib.suppress(OSError, AttributeError):
        sock = transport.underlying_transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.disconnect(graceful=False)


class Storm:
    """The storm members of one client process, their counters, and the publishers among them."""

    def __init__(self, port: int, query: str, deflate: bool, wait: float, acks: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.query = query
        self.headers = {"Sec-WebSocket-Extensions": DEFLATE_OFFER} if deflate else None
        self.wait = wait
        self.acks = acks
        self.members: list[Member] = []
        self.publishers: list[Member] = []
        self.random = random.Random()
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.publishing: asyncio.Task[None] | None = None
        self.interval = 0.0
        self.size = 100
        self.recording = False
        """Members keep the stamps they receive (from the start of publishing)."""
        self.drop_at: float | None = None
        self.since_ns: int | None = None
        """Messages stamped from this moment on (the drop) have their latency recorded."""
        self.counting = False
        self.frames = 0
        self.wire_bytes = 0
        self.kinds: Counter[str] = Counter()
        self.kind_bytes: Counter[str] = Counter()
        self.hist = [0] * latency.SIZE
        self.welcomed = 0
        """Members welcomed since the drop."""
        self.recovered: Counter[str] = Counter()
        """The ``recovered`` field of the welcomes after the drop: true, false, or absent (the references)."""
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.errors = 0
        self.error_samples: list[str] = []
        self.foreign = 0
        """Message frames whose text carries no stamp (nobody here sent them)."""

    # --- connecting ------------------------------------------------------------------------------

    def url(self, member: Member) -> str:
        path = storm_path(member.room, member.name, member.seq, member.epoch, self.query)
        return f"ws://127.0.0.1:{self.port}{path}"

    async def open(self, link: Link) -> None:
        """One connection of a member, up to its welcome (``wait`` seconds in all)."""
        member = link.member
        self.attempts += 1
        try:
            async with asyncio.timeout(self.wait):
                await ws_connect(
                    lambda: link,
                    self.url(member),
                    websocket_handshake_timeout=self.wait,
                    extra_headers=self.headers,
                    read_buffer_init_size=READ_BUFFER,
                    max_frame_size=64 * 1024 * 1024,
                    use_aiofastnet=False,
                    local_addr=(member.source, 0),
                )
                await link.ready
        except BaseException:
            if member.link is link:
                member.link = None  # welcomed as the wait ran out: this attempt failed all the same
            link.abort()
            raise

    async def connect(self, members: list[tuple[str, str, bool, str]], concurrency: int) -> Reply:
        """Open ``(room, name, publisher, source address)`` members, ``concurrency`` at a time, up to each welcome."""
        gate = asyncio.Semaphore(max(1, concurrency))
        failures: list[str] = []
        retries = 0

        async def open_one(member: Member) -> None:
            nonlocal retries
            for attempt in range(CONNECT_ATTEMPTS):
                async with gate:
                    link = Link(self, member)
                    try:
                        await self.open(link)
                        return
                    except Exception as exc:
                        if attempt + 1 == CONNECT_ATTEMPTS:
                            failures.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                            return
                        _, code, soon = classify(exc, link.code)
                retries += 1
                await asyncio.sleep(retry_delay(attempt + 1, code, soon, self.random.random))

        added = [Member(room, name, source, publisher) for room, name, publisher, source in members]
        self.members += added
        self.publishers += [member for member in added if member.outbox is not None]
        started = time.monotonic()
        await asyncio.gather(*(open_one(member) for member in added))
        return {
            "failed": len(failures),
            "failures": failures[:ERROR_SAMPLES],
            "retries": retries,
            "started": started,
            "finished": time.monotonic(),
        }

    def disconnected(self, link: Link) -> None:
        """A connection ended: before its welcome the attempt handles it; after, the member comes back later."""
        link.fail(f"closed before the welcome (code {link.code})")
        member = link.member
        if member.link is not link:
            return
        member.link = None
        if self.closed:
            return
        if self.drop_at is not None and member.dropped_at is None:
            member.dropped_at = time.monotonic()
        self.closes["cut" if link.was_cut else str(link.code) if link.code is not None else "no close frame"] += 1
        self.retry(member, link.code, soon=False)

    def retry(self, member: Member, code: int | None, soon: bool) -> None:
        delay = retry_delay(member.attempts, code, soon, self.random.random)
        member.attempts += 1
        member.timer = self.loop.call_later(delay, self.start_attempt, member)

    def start_attempt(self, member: Member) -> None:
        member.timer = None
        if self.closed:
            return
        task = self.loop.create_task(self.attempt(member))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def attempt(self, member: Member) -> None:
        link = Link(self, member)
        try:
            await self.open(link)
        except Exception as exc:
            if self.closed:
                return
            reason, code, soon = classify(exc, link.code)
            self.failures[reason] += 1
            self.retry(member, code, soon)
            return
        if member.link is link:
            member.attempts = 0

    # --- frames ----------------------------------------------------------------------------------

    def received(self, link: Link, data: bytes, wire: int) -> None:
        """One text message from the server (several frames when ``batch=1`` packed them, one per line)."""
        if self.counting:
            self.frames += 1
            self.wire_bytes += wire
        if b"\n" in data:
            for line in data.split(b"\n"):
                if line:
                    self.frame(link, line)
        else:
            self.frame(link, data)

    def frame(self, link: Link, data: bytes) -> None:
        if data.startswith(_MESSAGE):
            kind = "message"
            self.message(link.member, data)
        else:
            kind = KIND_OF.get(data[9 : data.find(b'"', 9)], "other") if data.startswith(_TYPE) else "other"
            if kind == "welcome":
                self.welcome(link, data)
            elif kind == "ack":
                self.ack(link.member, data)
            elif kind == "other":
                self.other(data)
        if self.counting:
            self.kinds[kind] += 1
            self.kind_bytes[kind] += len(data)

    def message(self, member: Member, data: bytes) -> None:
        try:
            start = data.index(_SEQ) + 6
            end = data.index(b",", start)
            seq = int(data[start:end])
            text = data.index(_TEXT_KEY, end) + 8
            stamp = int(data[text : text + STAMP_DIGITS])
        except ValueError:
            self.foreign += 1
            return
        self.receipt(member, seq, stamp)

    def receipt(self, member: Member, seq: int, stamp: int) -> None:
        """A message reached ``member`` (live, or in a welcome's history)."""
        if seq > member.seq:
            member.seq = seq
        outbox = member.outbox
        if outbox is not None:
            if stamp in outbox.unechoed:  # a reference's echo is its only acceptance
                outbox.unechoed.discard(stamp)
                outbox.accepted.append((None, stamp))
            return  # a publisher's own messages are not deliveries
        if self.recording:
            member.stamps.append(stamp)
        if stamp > member.newest:
            member.newest = stamp
            if self.since_ns is not None and stamp >= self.since_ns:
                self.hist[latency.bucket(_monotonic_ns() - stamp)] += 1

    def welcome(self, link: Link, data: bytes) -> None:
        member = link.member
        try:
            frame = json.loads(data)
        except ValueError:
            self.other(data)
            return
        epoch = frame.get("epoch")
        epoch = epoch if isinstance(epoch, str) else None
        if epoch != member.epoch:
            member.seq = 0  # a new sequence: seqs of the old epoch mean nothing now
        for entry in frame.get("history") or ():
            text = str(entry.get("text", ""))[:STAMP_DIGITS]
            if text.isdigit():
                self.receipt(member, int(entry.get("seq") or 0), int(text))
            else:
                self.foreign += 1
        member.seq = max(member.seq, int(frame.get("seq") or 0))
        member.epoch = epoch
        member.link = link
        if self.drop_at is not None:
            recovered = frame.get("recovered")
            if member.welcomed_at is None:
                member.welcomed_at = time.monotonic()
                self.welcomed += 1
            self.recovered[str(recovered).lower() if isinstance(recovered, bool) else "absent"] += 1
            if isinstance(recovered, bool):
                member.recovered = recovered and member.recovered is not False
        if not link.ready.done():
            link.ready.set_result(None)

    def ack(self, member: Member, data: bytes) -> None:
        outbox = member.outbox
        if outbox is None:
            return
        try:
            ref = json.loads(data).get("ref")
        except ValueError:
            return
        stamp = outbox.pending.pop(ref, None) if isinstance(ref, int) else None
        if stamp is not None:
            outbox.accepted.append((member.epoch, stamp))

    def other(self, data: bytes) -> None:
        try:
            frame = json.loads(data)
            kind = frame.get("type") if isinstance(frame, dict) else None
        except ValueError:
            kind = None
        if kind == "error" or kind is None:
            self.errors += 1
            if len(self.error_samples) < ERROR_SAMPLES:
                self.error_samples.append(data[:200].decode("utf-8", "replace"))

    # --- publishing ------------------------------------------------------------------------------

    def start_publishing(self, interval: float, size: int) -> None:
        """Every publisher sends a message each ``interval`` s from now, at a phase of its own; members record."""
        self.stop_publishing()
        self.interval = interval
        self.size = max(STAMP_DIGITS, size)
        self.recording = True
        if self.publishers:
            self.publishing = self.loop.create_task(self.publish())

    async def publish(self) -> None:
        now = self.loop.time()
        due = [(now + self.random.random() * self.interval, index) for index in range(len(self.publishers))]
        heapq.heapify(due)
        while True:
            when, index = due[0]
            delay = when - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            heapq.heapreplace(due, (when + self.interval, index))
            self.send(self.publishers[index], late=-delay > MAX_LAG)

    def send(self, member: Member, late: bool) -> None:
        outbox = member.outbox
        link = member.link
        if outbox is None:
            return
        if late or link is None or link.transport is None:
            outbox.skipped += 1
            return
        outbox.ref += 1
        stamp = _monotonic_ns()
        text = b"%020d" % stamp + PADDING[: self.size - STAMP_DIGITS]
        if self.acks:
            outbox.pending[outbox.ref] = stamp
            link.transport.send(_TEXT, b'{"type":"message","text":"%s","ref":%d}' % (text, outbox.ref))
        else:
            outbox.unechoed.add(stamp)
            link.transport.send(_TEXT, b'{"type":"message","text":"%s"}' % text)
        outbox.sent += 1

    def stop_publishing(self) -> None:
        if self.publishing is not None:
            self.publishing.cancel()
            self.publishing = None

    # --- the drop --------------------------------------------------------------------------------

    def arm(self, at: float, since_ns: int) -> None:
        """The drop is now (``at``, the harness's clock): count frames, time welcomes and latencies from here."""
        self.drop_at = at
        self.since_ns = since_ns
        self.counting = True
        self.frames = self.wire_bytes = 0
        self.kinds.clear()
        self.kind_bytes.clear()
        self.hist[:] = [0] * latency.SIZE
        self.welcomed = 0
        self.recovered.clear()
        self.attempts = 0
        self.failures.clear()
        self.closes.clear()
        for member in self.members:
            member.welcomed_at = member.dropped_at = None
            member.recovered = None

    def cut(self) -> int:
        """Reset every connection, as a network cut does for the clients; how many were open."""
        links = [member.link for member in self.members if member.link is not None]
        for link in links:
            link.cut()
        return len(links)

    # --- results ---------------------------------------------------------------------------------

    def stats(self) -> Reply:
        return {
            "members": len(self.members),
            "welcomed": self.welcomed,
            "connected": sum(1 for member in self.members if member.link is not None),
            "received": sum(len(member.stamps) for member in self.members),
            "accepted": sum(len(member.outbox.accepted) for member in self.publishers if member.outbox),
            "reconnect_attempts": self.attempts,
        }

    def report(self) -> Reply:
        """Everything counted since the drop, and what each publisher had accepted."""
        drop = self.drop_at or 0.0
        publishers = []
        for member in self.publishers:
            outbox = member.outbox
            assert outbox is not None
            publishers.append(
                {
                    "room": member.room,
                    "epoch": member.epoch,
                    "sent": outbox.sent,
                    "skipped": outbox.skipped,
                    "unacknowledged": len(outbox.pending) + len(outbox.unechoed),
                    "accepted": outbox.accepted,
                }
            )
        return {
            "members": len(self.members),
            "welcome_times": [member.welcomed_at - drop for member in self.members if member.welcomed_at is not None],
            "drop_times": [member.dropped_at - drop for member in self.members if member.dropped_at is not None],
            "frames": self.frames,
            "wire_bytes": self.wire_bytes,
            "kinds": dict(self.kinds),
            "kind_bytes": dict(self.kind_bytes),
            "hist": latency.sparse(self.hist),
            "recovered": dict(self.recovered),
            "reconnect_attempts": self.attempts,
            "failures": dict(self.failures),
            "closes": dict(self.closes),
            "errors": self.errors,
            "error_samples": list(self.error_samples),
            "foreign": self.foreign,
            "publishers": publishers,
        }

    def check(self, accepted: dict[str, list[int]]) -> Reply:
        """Each member against the messages its room's server accepted (``accepted``: stamps, in order).

        Members back (welcomed since the drop, and connected) are checked; the others are counted apart
        (``absent``), with the messages they have yet to get (``absent_pairs``).
        """
        expected = received = lost = duplicates = out_of_order = members_lost = lost_recovered = extra = 0
        absent = absent_pairs = 0
        samples: list[str] = []
        wanted_sets = {room: set(stamps) for room, stamps in accepted.items()}
        drop = self.drop_at or 0.0
        for member in self.members:
            if member.outbox is not None:
                continue
            wanted = wanted_sets.get(member.room, set())
            mine = [stamp for stamp in member.stamps if stamp in wanted]
            extra += len(member.stamps) - len(mine)
            unique = set(mine)
            missing = len(wanted) - len(unique)
            if member.link is None or (self.drop_at is not None and member.welcomed_at is None):
                absent += 1
                absent_pairs += missing
                continue
            expected += len(wanted)
            received += len(unique)
            duplicates += len(mine) - len(unique)
            out_of_order += sum(1 for before, after in itertools.pairwise(mine) if after < before)
            if missing:
                lost += missing
                members_lost += 1
                if member.recovered:
                    lost_recovered += missing
                if len(samples) < ERROR_SAMPLES:
                    first = min(wanted - unique) / 1e9 - drop
                    welcomed = (member.welcomed_at or drop) - drop
                    samples.append(
                        f"{member.name} in {member.room}: {missing} of {len(wanted)} missing, the first published "
                        f"at {first:+.2f} s; welcomed at {welcomed:+.2f} s (recovered {member.recovered})"
                    )
        return {
            "expected": expected,
            "received": received,
            "lost": lost,
            "members_lost": members_lost,
            "lost_recovered": lost_recovered,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "extra": extra,
            "absent": absent,
            "absent_pairs": absent_pairs,
            "samples": samples,
        }

    def close(self) -> None:
        """Stop publishing and reconnecting; reset every connection."""
        self.closed = True
        self.stop_publishing()
        for task in self.tasks:
            task.cancel()
        for member in self.members:
            if member.timer is not None:
                member.timer.cancel()
                member.timer = None
            if member.link is not None:
                member.link.abort()
                member.link = None
