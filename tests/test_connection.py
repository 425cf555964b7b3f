"""A member's outbound side: ordering, welcome-first with dedup, overflow, closes, failing and stuck sockets.

One suite runs against both ways to the socket (``DirectConnection`` on a stand-in writer,
``QueuedConnection`` with its writer task on a recording sender), and against a ``/ws`` room's
``Subscription`` over each of them; what only one of them does is tested after it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import TaskGroup
from starlette.websockets import WebSocketDisconnect

from chat.connection import Connection, DirectConnection, QueuedConnection, Subscription
from chat.exceptions import FrameTooLarge, GoingAway, PolicyViolation, Removed, ServiceRestart, SlowConsumer
from chat.protocol import Member, Message, encode_hello
from tests.standins import WAIT, Action, Closed, Recorder, RecordingSender, Sent, StandInWriter

pytestmark = pytest.mark.anyio

ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")
WELCOME = '{"type":"welcome"}'
BUFFER_FULL = Closed(1013, "slow consumer: outbound buffer full")
STALLED = Closed(1013, "slow consumer: the socket took nothing for too long")


HELLO = encode_hello(ALICE)


def message(seq: int, text: str = "hi", room: str = "lobby") -> Message:
    return Message(room, seq, BOB, text, 0)


def seqs(frames: list[str]) -> list[int]:
    return [json.loads(frame)["seq"] for frame in frames if json.loads(frame)["type"] == "message"]


class Side:
    """One connection under test and what reached its socket (but the hello of a ``/ws`` socket)."""

    def __init__(self, conn: Connection, recorder: Recorder, socket: Connection | None = None) -> None:
        self.conn = conn
        self.recorder = recorder
        self.socket = conn if socket is None else socket
        """The connection that owns the socket (``conn`` itself, or the ``/ws`` socket of ``conn``'s room)."""

    async def actions(self) -> list[Action]:
        """Everything the socket was asked to do so far, once the writer (if any) has nothing left to do."""
        await anyio.wait_all_tasks_blocked()
        return [action for action in self.recorder.actions if action != Sent(HELLO)]

    async def frames(self) -> list[str]:
        return [action.text for action in await self.actions() if isinstance(action, Sent)]


MakeSide = Callable[..., Side]


def socket_side(kind: str, task_group: TaskGroup, queue_bytes: int, room: str = "lobby") -> Side:
    """A connection of one kind (direct or queued, the latter with its writer task running)."""
    if kind == "direct":
        writer = StandInWriter()
        return Side(DirectConnection(writer, ALICE, room, queue_bytes), writer.recorder)
    sender = RecordingSender()
    conn = QueuedConnection(sender, ALICE, room, queue_bytes, WAIT)
    task_group.start_soon(conn.run)
    return Side(conn, sender.recorder)


def ignore(subscription: Subscription) -> None:
    """An ``on_close`` that does nothing."""


def room_side(kind: str, task_group: TaskGroup, queue_bytes: int) -> Side:
    """A ``/ws`` room of a connection of one kind that said hello; what reaches the socket after the hello."""
    socket = socket_side(kind, task_group, queue_bytes, room="")
    socket.conn.welcome(HELLO, 0)
    return Side(Subscription(socket.conn, "lobby", ignore), socket.recorder, socket.conn)


@pytest.fixture(params=["direct", "queued", "direct-room", "queued-room"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeSide]:
    """Builds connections of one kind; queued ones get their writer task, ended with the test."""
    sides: list[Side] = []
    kind, _, room = request.param.partition("-")

    def build(task_group: TaskGroup, queue_bytes: int = 10_000) -> Side:
        side = (room_side if room else socket_side)(kind, task_group, queue_bytes)
        sides.append(side)
        return side

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as task_group:
            yield lambda **options: build(task_group, **options)
            for side in sides:
                side.socket.close(GoingAway("test over"))


async def test_nothing_is_sent_before_the_welcome(make: MakeSide) -> None:
    """Frames queued before the welcome wait; nothing reaches the socket until welcome() is called."""
    side = make()
    side.conn.send("early")
    side.conn.deliver(message(1))
    assert await side.actions() == []


async def test_welcome_goes_first_then_queued_frames_in_order(make: MakeSide) -> None:
    """After welcome(), the welcome frame is sent first, then what queued meanwhile, oldest first."""
    side = make()
    side.conn.send("one")
    side.conn.send("two")
    side.conn.welcome(WELCOME, 0)
    side.conn.send("three")
    assert await side.frames() == [WELCOME, "one", "two", "three"]


async def test_welcome_drops_queued_messages_it_already_holds(make: MakeSide) -> None:
    """Messages queued before the welcome with seq <= the welcome's seq are dropped; others are kept."""
    side = make()
    side.conn.deliver(message(4))
    side.conn.send("signal")
    side.conn.deliver(message(5))
    side.conn.deliver(message(6))
    side.conn.welcome(WELCOME, 5)
    assert await side.frames() == [WELCOME, "signal", message(6).frame]


async def test_messages_at_or_below_last_seq_are_not_delivered_twice(make: MakeSide) -> None:
    """After the welcome at seq N, messages with seq <= N (or repeated) are ignored."""
    side = make()
    side.conn.welcome(WELCOME, 3)
    for seq in (2, 3, 4, 4, 3, 5):
        side.conn.deliver(message(seq))
    assert seqs(await side.frames()) == [4, 5]
    assert side.conn.last_seq == 5


async def test_buffered_counts_characters_before_the_welcome(make: MakeSide) -> None:
    """Before the welcome the buffer is measured in characters (not bytes) of the frames waiting."""
    side = make()
    side.conn.send("é" * 10)
    side.conn.send("🙂")
    assert side.conn.buffered == 11


async def test_frame_filling_the_buffer_exactly_is_kept(make: MakeSide) -> None:
    """A frame that brings the buffer to exactly queue_bytes is accepted."""
    side = make(queue_bytes=10)
    side.conn.send("x" * 4)
    side.conn.send("y" * 6)
    assert (side.conn.is_open, side.conn.buffered) == (True, 10)


async def test_overflow_closes_as_a_slow_consumer_and_drops_frames(make: MakeSide) -> None:
    """A frame that would overflow queue_bytes closes with 1013 (SlowConsumer); nothing queued is sent."""
    side = make(queue_bytes=10)
    side.conn.send("x" * 6)
    side.conn.send("y" * 5)
    assert isinstance(side.conn.closed_by, SlowConsumer)
    assert (side.conn.is_open, side.conn.buffered, side.conn.close_code) == (False, 0, 1013)
    side.conn.welcome(WELCOME, 0)
    assert await side.actions() == [BUFFER_FULL]


async def test_overflow_by_a_message_closes_too(make: MakeSide) -> None:
    """deliver() counts against the same buffer as send()."""
    side = make(queue_bytes=len(message(1).frame) * 2)
    for seq in (1, 2, 3):
        side.conn.deliver(message(seq))
    assert isinstance(side.conn.closed_by, SlowConsumer)


async def test_welcome_frame_is_not_bounded_by_the_buffer(make: MakeSide) -> None:
    """A welcome frame larger than queue_bytes (long history) is sent, not treated as overflow."""
    side = make(queue_bytes=10)
    big = json.dumps({"type": "welcome", "history": ["x" * 100]})
    side.conn.welcome(big, 0)
    assert side.conn.is_open
    assert await side.frames() == [big]


async def test_frames_after_close_are_ignored(make: MakeSide) -> None:
    """send, deliver and welcome after close reach nothing: the socket only gets the close."""
    side = make()
    side.conn.close(GoingAway("bye"))
    side.conn.send("late")
    side.conn.deliver(message(1))
    side.conn.welcome(WELCOME, 0)
    assert side.conn.buffered == 0
    assert await side.actions() == [Closed(1001, "bye")]


async def test_first_close_wins(make: MakeSide) -> None:
    """A second close does not change the code, the reason or what closed it."""
    side = make()
    first = FrameTooLarge("too big")
    side.conn.close(first)
    side.conn.close(PolicyViolation("removed", "removed"))
    assert side.conn.closed_by is first
    assert await side.actions() == [Closed(1009, "too big")]


async def test_close_after_the_welcome_sends_the_errors_code_and_detail(make: MakeSide) -> None:
    """A welcomed connection closes with the error's code and detail; nothing sent after the close gets out."""
    side = make()
    side.conn.welcome(WELCOME, 0)
    assert await side.frames() == [WELCOME]
    side.conn.close(PolicyViolation("kicked", "removed"))
    side.conn.send("never")
    assert await side.actions() == [Sent(WELCOME), Closed(1008, "kicked")]


async def test_gone_connection_refuses_frames(make: MakeSide) -> None:
    """Once the socket went away nothing more is queued or written."""
    side = make()
    side.conn.gone = True
    side.conn.send("late")
    side.conn.deliver(message(1))
    assert not side.conn.is_open
    assert side.conn.buffered == 0


# --- direct only -----------------------------------------------------------------------------------


def test_direct_frames_go_to_the_writer_framed() -> None:
    """Direct: a message goes to the writer with the wire bytes it was framed with once, for every member."""
    writer = StandInWriter()
    conn = DirectConnection(writer, ALICE, "lobby", 10_000)
    conn.deliver(message(1))
    conn.welcome(WELCOME, 0)
    conn.deliver(message(2))
    assert writer.wires[1:] == [message(1).wire, message(2).wire]


def test_direct_overflow_counts_the_sockets_backlog() -> None:
    """Direct: a frame that would take the socket's backlog past queue_bytes closes the member with 1013."""
    writer = StandInWriter()
    conn = DirectConnection(writer, ALICE, "lobby", 1000)
    conn.welcome(WELCOME, 0)
    writer.buffered = 990
    assert conn.buffered == 990
    conn.deliver(message(1))
    conn.deliver(message(2))
    assert writer.recorder.actions == [Sent(WELCOME), BUFFER_FULL]
    assert isinstance(conn.closed_by, SlowConsumer)


def test_direct_stall_closes_as_a_slow_consumer() -> None:
    """Direct: the writer's stall report closes the member with SlowConsumer, through the writer."""
    writer = StandInWriter()
    conn = DirectConnection(writer, ALICE, "lobby", 1000)
    conn.welcome(WELCOME, 0)
    conn.stalled()
    assert writer.recorder.actions == [Sent(WELCOME), STALLED]
    assert isinstance(conn.closed_by, SlowConsumer)


# --- queued only -----------------------------------------------------------------------------------


def queued(sender: RecordingSender, queue_bytes: int = 10_000, send_timeout: float = WAIT) -> QueuedConnection:
    return QueuedConnection(sender, ALICE, "lobby", queue_bytes, send_timeout)


@asynccontextmanager
async def running(conn: QueuedConnection) -> AsyncIterator[None]:
    """The connection's writer runs during the block; the block must close it, and the writer return, within WAIT."""
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run)
            yield


async def test_queued_frames_sent_while_the_writer_waits_wake_it() -> None:
    """Queued: a frame queued while the writer is idle is sent without any other nudge."""
    sender = RecordingSender()
    conn = queued(sender)
    async with running(conn):
        conn.welcome(WELCOME, 0)
        assert await sender.recorder.next() == Sent(WELCOME)
        await anyio.wait_all_tasks_blocked()
        conn.send("later")
        assert await sender.recorder.next() == Sent("later")
        conn.close(GoingAway("done"))


async def test_queued_run_returns_once_closed_while_idle() -> None:
    """Queued: a close requested while the writer waits for frames wakes it to send the close and return."""
    sender = RecordingSender()
    conn = queued(sender)
    conn.welcome(WELCOME, 0)
    async with running(conn):
        assert await sender.recorder.next() == Sent(WELCOME)
        await anyio.wait_all_tasks_blocked()
        conn.close(GoingAway("going away"))
    assert sender.recorder.actions[-1] == Closed(1001, "going away")
    assert conn.gone


@pytest.mark.parametrize(
    "error",
    [WebSocketDisconnect(1006), OSError("reset"), RuntimeError("closed")],
    ids=lambda error: type(error).__name__,
)
async def test_queued_sender_that_raises_ends_run(error: Exception) -> None:
    """Queued: a socket that fails while sending ends the writer quietly and marks the connection gone."""
    sender = RecordingSender(fail=error)
    conn = queued(sender)
    conn.welcome(WELCOME, 0)
    with anyio.fail_after(WAIT):
        await conn.run()
    assert conn.gone
    assert not conn.is_open
    assert sender.recorder.actions == []
    conn.send("late")
    assert conn.buffered == 0


async def test_queued_stuck_socket_is_closed_as_a_slow_consumer_after_send_timeout() -> None:
    """Queued: a socket that takes nothing for send_timeout seconds is closed with 1013 (SlowConsumer)."""
    sender = RecordingSender(block=True)
    conn = queued(sender, send_timeout=0.05)
    conn.welcome(WELCOME, 0)
    conn.send("queued")
    with anyio.fail_after(WAIT):
        await conn.run()
    assert isinstance(conn.closed_by, SlowConsumer)
    assert sender.recorder.actions == [STALLED]
    assert conn.gone


async def test_queued_close_interrupts_a_stuck_send() -> None:
    """Queued: close() during a send that never finishes cancels it and closes with the requested code."""
    sender = RecordingSender(block=True)
    conn = queued(sender, send_timeout=3600)
    conn.welcome(WELCOME, 0)
    async with running(conn):
        await sender.sending.wait()
        conn.close(PolicyViolation("policy", "removed"))
    assert sender.recorder.actions == [Closed(1008, "policy")]


async def test_queued_writer_cancelled_marks_connection_gone() -> None:
    """Queued: cancelling the writer (the socket's task group ending) leaves the connection marked gone."""
    conn = queued(RecordingSender())
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert conn.gone
    assert not conn.is_open


async def test_queued_batch_member_gets_what_queued_in_one_message() -> None:
    """Queued: with batch=1 the writer joins every queued frame into one message, one JSON object per line."""
    sender = RecordingSender()
    conn = QueuedConnection(sender, ALICE, "lobby", 10_000, WAIT, batch=True)
    conn.send('{"n":1}')
    conn.send('{"n":2}')
    conn.welcome(WELCOME, 0)
    async with running(conn):
        assert await sender.recorder.next() == Sent(WELCOME)
        assert await sender.recorder.next() == Sent('{"n":1}\n{"n":2}')
        conn.close(GoingAway("done"))


async def test_queued_close_drops_frames_the_writer_has_not_sent() -> None:
    """Queued: close() drops what is still queued (the welcome included); the writer sends only the close."""
    sender = RecordingSender()
    conn = queued(sender)
    conn.welcome(WELCOME, 0)
    conn.send("never")
    conn.close(PolicyViolation("kicked", "removed"))
    with anyio.fail_after(WAIT):
        await conn.run()
    assert sender.recorder.actions == [Closed(1008, "kicked")]
    assert conn.gone


# --- a /ws room (Subscription) only --------------------------------------------------------------


@pytest.fixture(params=["direct", "queued"])
async def socket(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    """A welcomed (hello) connection of one kind, to hold subscriptions; closed when the test ends."""
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as task_group:
            side = socket_side(request.param, task_group, 10_000, room="")
            side.conn.welcome(HELLO, 0)
            yield side
            side.conn.close(GoingAway("test over"))


def subscribe(side: Side, room: str, closed: list[Subscription] | None = None) -> Subscription:
    return Subscription(side.conn, room, ignore if closed is None else closed.append)


async def test_rooms_of_one_socket_count_their_own_seqs(socket: Side) -> None:
    """Two rooms' messages with the same seqs both get through: each room dedups on its own seq."""
    lobby, garden = subscribe(socket, "lobby"), subscribe(socket, "garden")
    lobby.welcome(WELCOME, 0)
    garden.welcome(WELCOME, 0)
    for seq in (1, 2):
        lobby.deliver(message(seq, room="lobby"))
        garden.deliver(message(seq, room="garden"))
    garden.deliver(message(2, room="garden"))
    rooms = [(json.loads(frame)["room"], json.loads(frame)["seq"]) for frame in (await socket.frames())[2:]]
    assert rooms == [("lobby", 1), ("garden", 1), ("lobby", 2), ("garden", 2)]


async def test_a_room_waiting_for_its_welcome_does_not_hold_the_others_back(socket: Side) -> None:
    """What a room gets before its welcome waits for it; a joined room's frames go out meanwhile."""
    lobby, garden = subscribe(socket, "lobby"), subscribe(socket, "garden")
    lobby.welcome(WELCOME, 0)
    garden.deliver(message(1, room="garden"))
    lobby.deliver(message(1, room="lobby"))
    assert await socket.frames() == [WELCOME, message(1, room="lobby").frame]
    garden.welcome(WELCOME, 0)
    assert (await socket.frames())[2:] == [WELCOME, message(1, room="garden").frame]


@pytest.mark.parametrize(
    ("error", "reason"), [(ServiceRestart("room restarted"), "restart"), (Removed("removed"), "removed")]
)
async def test_a_room_only_close_leaves_that_room_with_a_left_frame(
    socket: Side, error: ServiceRestart | Removed, reason: str
) -> None:
    """A restart or a removal takes the member out of that room alone: ``left`` with the reason, on_close."""
    closed: list[Subscription] = []
    lobby, garden = subscribe(socket, "lobby", closed), subscribe(socket, "garden", closed)
    lobby.welcome(WELCOME, 0)
    garden.welcome(WELCOME, 0)
    lobby.close(error)
    lobby.deliver(message(1, room="lobby"))
    garden.deliver(message(1, room="garden"))
    left = {"type": "left", "room": "lobby", "ref": None, "reason": reason}
    assert [json.loads(frame) for frame in (await socket.frames())[2:]] == [
        left,
        json.loads(message(1, "hi", "garden").frame),
    ]
    assert closed == [lobby]
    assert socket.conn.is_open
    assert garden.is_open


async def test_any_other_close_of_a_room_closes_the_socket(socket: Side) -> None:
    """A slow consumer (or any close not about the room alone) takes the whole socket down."""
    lobby, garden = subscribe(socket, "lobby"), subscribe(socket, "garden")
    lobby.welcome(WELCOME, 0)
    assert await socket.frames() == [WELCOME]
    lobby.close(SlowConsumer("slow consumer: outbound buffer full"))
    garden.welcome(WELCOME, 0)
    assert not socket.conn.is_open
    assert await socket.actions() == [Sent(WELCOME), BUFFER_FULL]


async def test_rooms_share_the_sockets_buffer() -> None:
    """After their welcomes, every room's frames count against the one socket's buffer."""
    writer = StandInWriter()
    conn = DirectConnection(writer, ALICE, "", 3_000)
    conn.welcome(HELLO, 0)
    lobby, garden = Subscription(conn, "lobby", ignore), Subscription(conn, "garden", ignore)
    lobby.welcome(WELCOME, 0)
    garden.welcome(WELCOME, 0)
    lobby.deliver(message(1, "x" * 1_000, "lobby"))
    garden.deliver(message(1, "x" * 1_000, "garden"))
    assert conn.is_open
    lobby.deliver(message(2, "x" * 1_000, "lobby"))
    assert isinstance(conn.closed_by, SlowConsumer)
