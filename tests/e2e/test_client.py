"""``chat.client`` against real server processes: restarts, cut connections, a slow reader, four busy senders,
a v1-only server, an operator's removal, a refused handshake, and the terminal chat through a pipe."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx2 as httpx
import pytest

import chat.client
from chat.client import Client, Leave, Message, Refused, Rejoined, Removed, Room, RoomClosed, RoomEvent
from tests.redis_server import RedisServer

from .server_process import ServerProcess, StartServer, environment, servers_on, stop_and_check

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

WAIT = 10.0
"""The most a test waits for something that comes at once, or after one reconnect."""
KEY = "e2e-client-key"


def address(server: ServerProcess | Proxy) -> str:
    return f"ws://{server.base}"


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture
def start_memory() -> Iterator[StartServer]:
    """Servers that remember nothing across a restart: the memory backend with the memory store."""
    yield from servers_on("memory://", {"rate_per_second": 0})


@pytest.fixture
def start_durable() -> Iterator[StartServer]:
    """Servers on a SQLite store in their folder, which a restart in the same folder finds again; a member may
    miss up to 5000 messages and still recover them all (what the server had queued for it is lost at a stop)."""
    yield from servers_on("memory://", {"store": "sqlite:///chat.db", "rate_per_second": 0, "history_size": 5000})


class Restarts:
    """Stops servers (SIGTERM: their members get 1012) and runs them again on the same port, in the same folder
    (so on the same store file); the event loop runs on meanwhile, as the clients must."""

    def __init__(self) -> None:
        self.started: list[ServerProcess] = []

    async def stop(self, server: ServerProcess) -> None:
        assert await anyio.to_thread.run_sync(server.stop) is None, "the server had to be killed"

    async def rerun(self, server: ServerProcess) -> ServerProcess:
        process = ServerProcess(server.argv, server.port, environment(), server.cwd)
        self.started.append(process)
        assert await anyio.to_thread.run_sync(process.wait_ready), process.log
        return process

    async def restart(self, server: ServerProcess) -> ServerProcess:
        await self.stop(server)
        return await self.rerun(server)


@pytest.fixture
def restarts() -> Iterator[Restarts]:
    """Restarts of servers; the processes run again are stopped and checked after the test."""
    restarts = Restarts()
    yield restarts
    problems = stop_and_check(restarts.started)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


# --- a proxy to cut and to refuse through ---------------------------------------------------------

MULTIROOM_REQUEST = re.compile(rb"GET \S*/ws(?:\?| )")
WEBSOCKET_REQUEST = re.compile(rb"GET \S*/ws(?:/|\?| )")


class Proxy:
    """A loopback TCP forwarder to a server: ``cut()`` drops every connection through it (the client sees a
    dead socket), ``refuse`` answers matching handshakes 403 as a server would (``"multiroom"``: only ``/ws``,
    as a server without protocol v1.1; ``"all"``: every one)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refuse: str | None = None
        self.forwarded: list[bytes] = []
        self.refused: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every open connection at once, with no close frame (as a network failure would)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request = head.split(b"\r\n", 1)[0]
            pattern = {"multiroom": MULTIROOM_REQUEST, "all": WEBSOCKET_REQUEST}.get(self.refuse or "")
            if pattern is not None and pattern.match(request):
                self.refused.append(request)
                body = json.dumps({"type": "error", "code": "forbidden", "detail": "not here"}).encode()
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n")
                writer.write(b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return
            self.forwarded.append(request)
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(upstream)
            try:
                upstream.write(head)
                async with asyncio.TaskGroup() as pumps:
                    pumps.create_task(pump(reader, upstream))
                    pumps.create_task(pump(upstream_reader, writer))
            finally:
                self._writers.discard(upstream)
                upstream.transport.abort()
        except (OSError, asyncio.IncompleteReadError, ExceptionGroup):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side goes, then drop the other."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.transport.abort()


# --- reading rooms ---------------------------------------------------------------------------------


async def read_until(room: Room, done: Callable[[list[RoomEvent]], bool], within: float = WAIT) -> list[RoomEvent]:
    """The room's events until ``done(events so far)``; fails after ``within`` seconds."""
    events: list[RoomEvent] = []
    with anyio.fail_after(within):
        async for event in room:
            events.append(event)
            if done(events):
                return events
    raise AssertionError(f"the room ended after {events}")


def messages(events: list[RoomEvent]) -> list[Message]:
    return [event for event in events if isinstance(event, Message)]


def texts(events: list[RoomEvent]) -> list[str]:
    return [message.text for message in messages(events)]


def until_text(text: str) -> Callable[[list[RoomEvent]], bool]:
    return lambda events: bool(events) and isinstance(events[-1], Message) and events[-1].text == text


def until_count(count: int) -> Callable[[list[RoomEvent]], bool]:
    return lambda events: len(messages(events)) >= count


def assert_gap_free(events: list[RoomEvent]) -> None:
    """Every message once, with seqs rising by exactly 1."""
    seqs = [message.seq for message in messages(events)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def tasks_of(client: Client) -> list[asyncio.Task[object]]:
    """The tasks of ``client``'s connections still running."""
    owned = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        link = frame.f_locals.get("self") if frame is not None else None
        if getattr(link, "options", None) is client.options:
            owned.append(task)
    return owned


@asynccontextmanager
async def member(server: ServerProcess | Proxy, name: str, **options: object) -> AsyncIterator[Client]:
    """A client of ``server``; afterwards, none of its tasks is left."""
    async with chat.client.connect(address(server), name=name, **options) as client:  # type: ignore[arg-type]
        assert tasks_of(client) or client.multiroom is False
        yield client
    assert tasks_of(client) == []


async def send_all(room: Room, lines: list[str], window: int = 50) -> list[int]:
    """Send every line, at most ``window`` waiting for their ack at once; their seqs, in order."""
    seqs: list[int] = []
    for start in range(0, len(lines), window):
        seqs += await asyncio.gather(*(room.send(line) for line in lines[start : start + window]))
    return seqs


# --- restarts ------------------------------------------------------------------------------------


async def test_a_restart_without_a_store_is_reported_as_not_recovered(
    start_memory: StartServer, restarts: Restarts
) -> None:
    """The server restarts on memory: every room rejoins by itself and says ``recovered: false``; a message sent
    while it was down goes out after the rejoin, its send resolving on the ack."""
    server = start_memory()
    async with member(server, "ann") as ann, member(server, "bob") as bob:
        said, heard = await ann.join("lobby"), await bob.join("lobby")
        assert await send_all(said, ["one", "two"]) == [1, 2]
        await read_until(heard, until_text("two"))
        await restarts.stop(server)
        sent = asyncio.create_task(said.send("while away"))
        server = await restarts.rerun(server)
        with anyio.fail_after(WAIT):
            assert await sent == 1
        events = await read_until(heard, until_text("while away"))
        assert Rejoined("lobby", False, heard.epoch or "") in events
        assert heard.recovered is False
        assert said.recovered is False
        assert [m.seq for m in messages(events)] == [1]


async def test_a_restart_on_a_durable_store_loses_nothing_and_repeats_nothing(
    start_durable: StartServer, restarts: Restarts
) -> None:
    """SQLite across a restart while a member publishes: the reader sees every message once, in order,
    after a ``Rejoined(recovered=True)``; every send resolves, with the seq the reader saw."""
    server = start_durable()
    count = 2000
    lines = [f"line {index}" for index in range(count)]
    async with member(server, "ann") as ann, member(server, "bob") as bob:
        said, heard = await ann.join("lobby"), await bob.join("lobby")
        await send_all(said, lines[:100])
        publishing = asyncio.create_task(send_all(said, lines[100:], window=10))
        server = await restarts.restart(server)
        events = await read_until(
            heard, lambda events: len(messages(events)) >= count and Rejoined in map(type, events), within=30
        )
        with anyio.fail_after(WAIT):
            seqs = [*range(1, 101), *await publishing]
    assert texts(events) == lines
    assert_gap_free(events)
    assert seqs == [message.seq for message in messages(events)]
    assert [e for e in events if isinstance(e, Rejoined)] == [Rejoined("lobby", True, heard.epoch or "")]


@pytest.fixture
def start_node(redis_server: RedisServer) -> Iterator[StartServer]:
    """Servers on the test's own Redis, which it may restart empty."""
    yield from servers_on(redis_server.url, {"rate_per_second": 0})


@pytest.mark.parametrize("multiroom", [True, False])
async def test_a_room_whose_sequence_restarted_rejoins_by_itself(
    start_node: StartServer, redis_server: RedisServer, multiroom: bool
) -> None:
    """Redis restarted empty: the room (``left`` restart on /ws, 1012 on v1) rejoins by itself and says
    ``recovered: false``, under the new epoch; sending goes on from seq 1."""
    server = start_node()
    async with member(server, "ann", multiroom=multiroom) as ann:
        room = await ann.join("alpha")
        assert await room.send("before") == 1
        await read_until(room, until_text("before"))
        epoch = room.epoch
        await anyio.to_thread.run_sync(redis_server.restart)
        events = await read_until(room, lambda events: Rejoined in map(type, events))
        assert events[-1] == Rejoined("alpha", False, room.epoch or "")
        assert room.epoch != epoch
        with anyio.fail_after(WAIT):
            assert await room.send("after") == 1


# --- a cut connection --------------------------------------------------------------------------------


async def test_a_cut_connection_reconnects_and_recovers_what_was_missed(start_server: StartServer) -> None:
    """The TCP connection dies without a close: the client reconnects by itself and the room gets every message
    sent meanwhile, once, in order; messages it sent meanwhile go out after the rejoin."""
    server = start_server(rate_per_second=0)
    async with Proxy(server.port) as proxy, member(server, "ann") as ann, member(proxy, "bob") as bob:
        said, heard = await ann.join("lobby"), await bob.join("lobby")
        mine = await bob.join("other")
        await said.send("before")
        await read_until(heard, until_text("before"))
        proxy.cut()
        sent = asyncio.create_task(heard.send("from bob"))
        meanwhile = [f"meanwhile {i}" for i in range(20)]
        await send_all(said, meanwhile)
        events = await read_until(heard, lambda events: len(messages(events)) == 21, within=WAIT)
        with anyio.fail_after(WAIT):
            seq = await sent
        assert [t for t in texts(events) if t != "from bob"] == meanwhile
        assert [m.seq for m in messages(events) if m.text == "from bob"] == [seq]
        assert_gap_free(events)
        assert isinstance(events[0], Rejoined)
        assert events[0].recovered
        assert len(proxy.forwarded) == 2, "the rooms share one connection, and one reconnect"
        assert mine.live
        assert mine.recovered


async def test_an_outbox_past_the_servers_rate_drains_at_its_pace_in_order(server: ServerProcess) -> None:
    """60 messages sent while cut off, to a server that takes bursts of 20 then 10 a second: after the rejoin
    those refused as rate_limited go out again, and every send resolves, in the order sent."""
    async with Proxy(server.port) as proxy, member(proxy, "ann") as ann:
        room = await ann.join("lobby")
        proxy.cut()
        sends = [asyncio.create_task(room.send(f"queued {index}")) for index in range(60)]
        with anyio.fail_after(30):
            assert await asyncio.gather(*sends) == list(range(1, 61))
        events = await read_until(room, until_text("queued 59"))
        assert texts(events) == [f"queued {index}" for index in range(60)]


# --- a slow consumer -------------------------------------------------------------------------------


async def test_a_reader_that_stops_is_closed_as_slow_then_recovers_everything(start_memory: StartServer) -> None:
    """The application stops reading: the client stops reading its socket, the server closes it with 1013, and
    once the application reads again the client reconnects and it gets every message once, in order."""
    big = "x" * 20000
    server = start_memory(send_timeout=1, history_size=5000, max_text=len(big) + 10)
    async with (
        member(server, "publisher") as publisher,
        member(server, "slow", max_events=4, max_size=256 * 1024 * 1024) as slow,
    ):
        said, stalled = await publisher.join("flood"), await slow.join("flood")
        closed = asyncio.create_task(anyio.to_thread.run_sync(lambda: server.wait_log("code=1013", timeout=60)))
        count = 0
        with anyio.fail_after(60):
            while not closed.done():
                await send_all(said, [f"{count + i} {big}" for i in range(10)], window=10)
                count += 10
            await closed
        events = await read_until(stalled, until_count(count), within=30)
    assert [int(text.split()[0]) for text in texts(events)] == list(range(count))
    assert_gap_free(events)
    assert Rejoined("flood", True, stalled.epoch or "") in events


# --- four busy senders -----------------------------------------------------------------------------


async def test_four_clients_sending_a_thousand_each_all_see_one_order(start_server: StartServer) -> None:
    """4 x 1000 messages at once: every client sees all 4000, each once, in one and the same order, and each
    sender's own in the order sent."""
    server = start_server(rate_per_second=0)
    names = ["ann", "bob", "cid", "dan"]
    per_client = 1000

    async def run(client: Client) -> list[RoomEvent]:
        room = await client.join("busy")
        await barrier.wait()
        reading = asyncio.create_task(read_until(room, until_count(len(names) * per_client), within=60))
        lines = [f"{room.me.name if room.me else '?'} {index}" for index in range(per_client)]
        await send_all(room, lines, window=25)
        return await reading

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(member(server, name)) for name in names]
        barrier = asyncio.Barrier(len(names))  # everyone joined before anyone speaks
        seen = await asyncio.gather(*(run(client) for client in clients))
    orders = [texts(events) for events in seen]
    assert all(order == orders[0] for order in orders)
    assert len(orders[0]) == len(set(orders[0])) == len(names) * per_client
    for events in seen:
        assert_gap_free(events)
    for name in names:
        own = [int(text.split()[1]) for text in orders[0] if text.split()[0] == name]
        assert own == list(range(per_client))


# --- a v1-only server ------------------------------------------------------------------------------


async def test_without_v1_1_every_room_gets_a_connection_of_its_own(server: ServerProcess) -> None:
    """Where ``/ws`` is refused the client speaks v1, one connection per room, and still recovers after a cut."""
    async with Proxy(server.port) as proxy:
        proxy.refuse = "multiroom"
        async with member(server, "ann") as ann, member(proxy, "bob") as bob:
            assert bob.multiroom is False
            assert ann.multiroom is True
            rooms = {name: await bob.join(name) for name in ("one", "two")}
            said = {name: await ann.join(name) for name in ("one", "two")}
            assert len(proxy.refused) == 1
            assert len(proxy.forwarded) == 2
            for name, room in rooms.items():
                assert await room.send(f"bob in {name}") == 1
                assert texts(await read_until(room, until_text(f"bob in {name}"))) == [f"bob in {name}"]
            proxy.cut()
            for name, room in said.items():
                await room.send(f"ann in {name}")
            for name, room in rooms.items():
                events = await read_until(room, until_text(f"ann in {name}"))
                assert events[0] == Rejoined(name, True, room.epoch or "")
                assert [(m.seq, m.text) for m in messages(events)] == [(2, f"ann in {name}")]
            assert len(proxy.forwarded) == 4


async def test_forcing_v1_uses_one_connection_per_room(server: ServerProcess) -> None:
    """``multiroom=False``: no ``/ws`` at all, each room on ``/ws/{room}``."""
    async with Proxy(server.port) as proxy, member(proxy, "ann", multiroom=False) as ann:
        one, two = await ann.join("one"), await ann.join("two")
        assert (await one.send("a"), await two.send("b")) == (1, 1)
        assert [request.split()[1].split(b"?")[0] for request in proxy.forwarded] == [b"/ws/one", b"/ws/two"]
        assert [m.text for m in await one.history()] == ["a"]


# --- refusals and removals ---------------------------------------------------------------------------


async def test_a_refused_handshake_is_raised_not_retried(server: ServerProcess) -> None:
    """Every handshake refused with 403: ``join`` raises ``Refused`` with the server's reason, after one try."""
    async with Proxy(server.port) as proxy:
        proxy.refuse = "all"
        async with member(proxy, "ann") as ann:
            with pytest.raises(Refused) as refused:
                await ann.join("lobby")
        assert (refused.value.status, refused.value.code, refused.value.detail) == (403, "forbidden", "not here")
        assert len(proxy.refused) == 2  # /ws, then /ws/lobby


async def test_a_handshake_refused_on_reconnect_ends_the_room_with_refused(server: ServerProcess) -> None:
    """Refused after a cut: the iteration raises ``Refused`` and sends fail, instead of retrying for ever."""
    async with Proxy(server.port) as proxy, member(proxy, "ann") as ann:
        room = await ann.join("lobby")
        proxy.refuse = "all"
        proxy.cut()
        with anyio.fail_after(WAIT), pytest.raises(Refused):
            async for _ in room:
                pass
        with pytest.raises(Refused):
            await room.send("too late")
        with pytest.raises(Refused):
            await ann.join("another")


@pytest.mark.parametrize("multiroom", [True, False])
async def test_an_operators_removal_ends_the_room(start_server: StartServer, multiroom: bool) -> None:
    """DELETE of the member: the room yields ``Removed`` and ends, is not rejoined, and sends raise ``RoomClosed``."""
    server = start_server(env={"CHAT_API_KEY": KEY})
    async with member(server, "ann", multiroom=multiroom) as ann:
        room, kept = await ann.join("lobby"), await ann.join("kept")
        assert room.me is not None
        async with httpx.AsyncClient(timeout=WAIT, headers={"Authorization": f"Bearer {KEY}"}) as api:
            response = await api.delete(f"http://{server.base}/api/rooms/lobby/members/{room.me.id}")
        assert response.status_code == 200, response.text
        events = [event async for event in room]
        assert events[-1] == Removed("lobby")
        with pytest.raises(RoomClosed):
            await room.send("still here?")
        assert "lobby" not in ann.rooms
        assert await kept.send("the other room stays") == 1


# --- the terminal chat --------------------------------------------------------------------------


async def read_line_with(stream: asyncio.StreamReader, text: str) -> str:
    with anyio.fail_after(WAIT):
        while line := (await stream.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the output ended without {text!r}")


async def test_the_terminal_chat_through_a_pipe(server: ServerProcess) -> None:
    """``python -m chat.client``: lines on stdin reach the room, the room's messages are printed, EOF exits 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chat.client",
        address(server),
        "lobby",
        "--name",
        "term",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with member(server, "ann") as ann:
            room = await ann.join("lobby")
            await read_line_with(process.stdout, "* joined lobby as term")
            process.stdin.write(b"hello from the terminal\nsecond line\n")
            events = await read_until(room, until_text("second line"))
            term = messages(events)[-1].sender
            assert [(m.sender.name, m.text) for m in messages(events)][-2:] == [
                ("term", "hello from the terminal"),
                ("term", "second line"),
            ]
            await room.send("hello terminal")
            assert (await read_line_with(process.stdout, "hello terminal")).rstrip().endswith("ann: hello terminal")
            if term.id not in room.members:  # announced once per presence window
                await read_until(room, lambda _: term.id in room.members)
            process.stdin.close()
            with anyio.fail_after(WAIT):
                status = await process.wait()
            errors = (await process.stderr.read()).decode()
            assert status == 0, errors
            assert errors == ""
            await read_until(room, lambda events: Leave("lobby", term) in events)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_terminal_chat_ends_with_status_0_on_ctrl_c(server: ServerProcess) -> None:
    """SIGINT (Ctrl-C) while it waits for input: it leaves, with status 0 and nothing on stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "chat.client", address(server), "lobby", "--name", "term"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        await read_line_with(process.stdout, "* joined lobby as term")
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            status = await process.wait()
        assert (status, (await process.stderr.read()).decode()) == (0, "")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
