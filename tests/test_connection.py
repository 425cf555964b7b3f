"""A member's outbound side: ordering, welcome-first with dedup, overflow, failing and stuck sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from starlette.websockets import WebSocketDisconnect

from chat.connection import SLOW_CONSUMER, Connection
from chat.protocol import Member, Message
from tests.standins import WAIT, Closed, RecordingSender, Sent

pytestmark = pytest.mark.anyio

ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")
WELCOME = '{"type":"welcome"}'


def message(seq: int, text: str = "hi") -> Message:
    return Message("lobby", seq, BOB, text, 0)


def connection(sender: RecordingSender, queue_bytes: int = 10_000, send_timeout: float = WAIT) -> Connection:
    return Connection(sender, ALICE, "lobby", queue_bytes, send_timeout)


def seqs(frames: list[str]) -> list[int]:
    return [json.loads(frame)["seq"] for frame in frames if json.loads(frame)["type"] == "message"]


@asynccontextmanager
async def running(conn: Connection) -> AsyncIterator[None]:
    """The connection's writer runs during the block; the block must close it, and the writer return, within WAIT."""
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run)
            yield


async def test_nothing_is_sent_before_the_welcome() -> None:
    """Frames queued before the welcome wait; the writer sends nothing until welcome() is called."""
    sender = RecordingSender()
    conn = connection(sender)
    async with running(conn):
        conn.send("early")
        await anyio.wait_all_tasks_blocked()
        assert sender.recorder.actions == []
        conn.close(1000, "done")
    assert sender.recorder.actions == [Closed(1000, "done")]


async def test_welcome_goes_first_then_queued_frames_in_order() -> None:
    """After welcome(), the welcome frame is sent first, then what queued meanwhile, oldest first."""
    sender = RecordingSender()
    conn = connection(sender)
    async with running(conn):
        conn.send("one")
        conn.send("two")
        conn.welcome(WELCOME, 0)
        conn.send("three")
        for expected in (WELCOME, "one", "two", "three"):
            assert await sender.recorder.next() == Sent(expected)
        conn.close(1000, "done")


async def test_welcome_drops_queued_messages_it_already_holds() -> None:
    """Messages queued before the welcome with seq <= the welcome's seq are dropped; others are kept."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.deliver(message(4))
    conn.send("signal")
    conn.deliver(message(5))
    conn.deliver(message(6))
    conn.welcome(WELCOME, 5)
    assert conn.buffered == len("signal") + len(message(6).frame)
    async with running(conn):
        for expected in (WELCOME, "signal", message(6).frame):
            assert await sender.recorder.next() == Sent(expected)
        conn.close(1000, "done")


async def test_messages_at_or_below_last_seq_are_not_delivered_twice() -> None:
    """After the welcome at seq N, messages with seq <= N (or repeated) are ignored."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.welcome(WELCOME, 3)
    for seq in (2, 3, 4, 4, 3, 5):
        conn.deliver(message(seq))
    async with running(conn):
        assert await sender.recorder.next() == Sent(WELCOME)
        assert [await sender.recorder.next() for _ in range(2)] == [Sent(message(4).frame), Sent(message(5).frame)]
        conn.close(1000, "done")
    assert conn.last_seq == 5
    assert seqs(sender.recorder.frames) == [4, 5]


async def test_frames_sent_while_the_writer_waits_wake_it() -> None:
    """A frame queued while the writer is idle is sent without any other nudge."""
    sender = RecordingSender()
    conn = connection(sender)
    async with running(conn):
        conn.welcome(WELCOME, 0)
        assert await sender.recorder.next() == Sent(WELCOME)
        await anyio.wait_all_tasks_blocked()
        conn.send("later")
        assert await sender.recorder.next() == Sent("later")
        conn.close(1000, "done")


async def test_buffered_counts_characters() -> None:
    """The buffer is measured in characters (not bytes) of the frames waiting."""
    conn = connection(RecordingSender())
    conn.send("é" * 10)
    conn.send("🙂")
    assert conn.buffered == 11


async def test_frame_filling_the_buffer_exactly_is_kept() -> None:
    """A frame that brings the buffer to exactly queue_bytes is accepted."""
    conn = connection(RecordingSender(), queue_bytes=10)
    conn.send("x" * 4)
    conn.send("y" * 6)
    assert (conn.is_open, conn.buffered) == (True, 10)


async def test_overflow_closes_with_1013_and_drops_frames() -> None:
    """A frame that would overflow queue_bytes closes with 1013; nothing queued is sent."""
    sender = RecordingSender()
    conn = connection(sender, queue_bytes=10)
    conn.send("x" * 6)
    conn.send("y" * 5)
    assert conn.close_code == SLOW_CONSUMER
    assert (conn.is_open, conn.buffered) == (False, 0)
    conn.welcome(WELCOME, 0)
    with anyio.fail_after(WAIT):
        await conn.run()
    assert sender.recorder.actions == [Closed(SLOW_CONSUMER, "slow consumer: outbound buffer full")]


async def test_overflow_by_a_message_closes_too() -> None:
    """deliver() counts against the same buffer as send()."""
    frame = message(1).frame
    conn = connection(RecordingSender(), queue_bytes=len(frame) * 2)
    for seq in (1, 2, 3):
        conn.deliver(message(seq))
    assert conn.close_code == SLOW_CONSUMER


async def test_welcome_frame_is_not_bounded_by_the_buffer() -> None:
    """A welcome frame larger than queue_bytes (long history) is sent, not treated as overflow."""
    sender = RecordingSender()
    conn = connection(sender, queue_bytes=10)
    big = json.dumps({"type": "welcome", "history": ["x" * 100]})
    conn.welcome(big, 0)
    assert conn.is_open
    async with running(conn):
        assert await sender.recorder.next() == Sent(big)
        conn.close(1000, "done")


async def test_frames_after_close_are_ignored() -> None:
    """send, deliver and welcome after close change nothing."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.close(1000, "bye")
    conn.send("late")
    conn.deliver(message(1))
    conn.welcome(WELCOME, 0)
    assert conn.buffered == 0
    with anyio.fail_after(WAIT):
        await conn.run()
    assert sender.recorder.actions == [Closed(1000, "bye")]
    # A direct connection writes as frames come, so there a late frame would reach the socket.
    writer = StandInWriter()
    direct = Connection(RecordingSender(), ALICE, "lobby", 10_000, WAIT, writer)
    direct.close(1000, "bye")
    direct.send("late")
    direct.deliver(message(1))
    direct.welcome(WELCOME, 0)
    assert (writer.frames, writer.closed) == ([], (1000, "bye"))


async def test_first_close_wins() -> None:
    """A second close does not change the code or reason."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.close(1009, "too big")
    conn.close(1000, "normal")
    with anyio.fail_after(WAIT):
        await conn.run()
    assert sender.recorder.actions == [Closed(1009, "too big")]


async def test_close_drops_unsent_frames_and_sends_the_close() -> None:
    """close() drops what is still queued, then the writer closes the socket with the code and returns."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.welcome(WELCOME, 0)
    conn.send("never")
    conn.close(4000, "kicked")
    with anyio.fail_after(WAIT):
        await conn.run()
    assert sender.recorder.actions == [Closed(4000, "kicked")]
    assert conn.gone


async def test_run_returns_once_closed_while_idle() -> None:
    """A close requested while the writer waits for frames wakes it to send the close and return."""
    sender = RecordingSender()
    conn = connection(sender)
    conn.welcome(WELCOME, 0)
    async with running(conn):
        assert await sender.recorder.next() == Sent(WELCOME)
        await anyio.wait_all_tasks_blocked()
        conn.close(1001, "going away")
    assert sender.recorder.actions[-1] == Closed(1001, "going away")


@pytest.mark.parametrize(
    "error",
    [WebSocketDisconnect(1006), OSError("reset"), RuntimeError("closed")],
    ids=lambda error: type(error).__name__,
)
async def test_sender_that_raises_ends_run(error: Exception) -> None:
    """A socket that fails while sending ends the writer quietly and marks the connection gone."""
    sender = RecordingSender(fail=error)
    conn = connection(sender)
    conn.welcome(WELCOME, 0)
    with anyio.fail_after(WAIT):
        await conn.run()
    assert conn.gone
    assert not conn.is_open
    assert sender.recorder.actions == []


async def test_gone_connection_refuses_frames() -> None:
    """Once the socket went away nothing more is queued."""
    sender = RecordingSender(fail=OSError("reset"))
    conn = connection(sender)
    conn.welcome(WELCOME, 0)
    with anyio.fail_after(WAIT):
        await conn.run()
    conn.send("late")
    assert conn.buffered == 0


async def test_stuck_socket_is_closed_with_1013_after_send_timeout() -> None:
    """A socket that takes nothing for send_timeout seconds is closed with 1013."""
    sender = RecordingSender(block=True)
    conn = connection(sender, send_timeout=0.05)
    conn.welcome(WELCOME, 0)
    conn.send("queued")
    with anyio.fail_after(WAIT):
        await conn.run()
    assert conn.close_code == SLOW_CONSUMER
    assert sender.recorder.actions == [Closed(SLOW_CONSUMER, "slow consumer: the socket took nothing for too long")]
    assert conn.gone


async def test_close_interrupts_a_stuck_send() -> None:
    """close() during a send that never finishes cancels it and closes with the requested code."""
    sender = RecordingSender(block=True)
    conn = connection(sender, send_timeout=3600)
    conn.welcome(WELCOME, 0)
    async with running(conn):
        await sender.sending.wait()
        conn.close(1008, "policy")
    assert sender.recorder.actions == [Closed(1008, "policy")]


async def test_writer_cancelled_marks_connection_gone() -> None:
    """Cancelling the writer (the socket's task group ending) leaves the connection marked gone."""
    conn = connection(RecordingSender())
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert conn.gone
    assert not conn.is_open


async def test_batch_member_gets_what_queued_in_one_message() -> None:
    """With batch=1 the writer joins every queued frame into one message, one JSON object per line."""
    sender = RecordingSender()
    conn = Connection(sender, ALICE, "lobby", 10_000, WAIT, batch=True)
    conn.send('{"n":1}')
    conn.send('{"n":2}')
    conn.welcome(WELCOME, 0)
    async with running(conn):
        assert await sender.recorder.next() == Sent(WELCOME)
        assert await sender.recorder.next() == Sent('{"n":1}\n{"n":2}')
        conn.close(1000, "done")


class StandInWriter:
    """A direct writer that records frames and reports a settable buffer size."""

    def __init__(self) -> None:
        self.stall_timeout = 0.0
        self.batch = False
        self.write_delay = 0.0
        self.frames: list[tuple[str, bytes]] = []
        self.closed: tuple[int, str] | None = None
        self.buffered = 0

    def direct_write(self, frame: str, wire: bytes) -> None:
        self.frames.append((frame, wire))
        self.buffered += len(wire)

    def direct_buffered(self) -> int:
        return self.buffered

    def direct_close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def test_direct_writes_start_with_the_welcome_and_keep_order() -> None:
    """Direct: frames wait for the welcome, then go to the writer at once, framed, in order."""
    writer = StandInWriter()
    conn = Connection(RecordingSender(), ALICE, "lobby", 10_000, WAIT, writer)
    conn.deliver(message(1))
    conn.send("early")
    assert writer.frames == []
    conn.welcome(WELCOME, 0)
    conn.deliver(message(2))
    assert [frame for frame, _ in writer.frames] == [WELCOME, message(1).frame, "early", message(2).frame]
    assert writer.frames[1][1] == message(1).wire
    assert writer.stall_timeout == WAIT
    assert writer.write_delay == 0.0


def test_direct_writer_gets_the_write_delay() -> None:
    """The connection hands the server's write delay to its socket, as it does the stall timeout."""
    writer = StandInWriter()
    Connection(RecordingSender(), ALICE, "lobby", 10_000, WAIT, writer, write_delay=0.02)
    assert writer.write_delay == 0.02


def test_direct_welcome_drops_messages_its_history_holds() -> None:
    """Direct: messages queued before a welcome at seq 1 are sent only from seq 2 on."""
    writer = StandInWriter()
    conn = Connection(RecordingSender(), ALICE, "lobby", 10_000, WAIT, writer)
    conn.deliver(message(1))
    conn.deliver(message(2))
    conn.welcome(WELCOME, 1)
    assert [frame for frame, _ in writer.frames] == [WELCOME, message(2).frame]


def test_direct_overflow_closes_with_1013_through_the_writer() -> None:
    """Direct: a frame that would take the socket's backlog past queue_bytes closes the member with 1013."""
    writer = StandInWriter()
    conn = Connection(RecordingSender(), ALICE, "lobby", 1000, WAIT, writer)
    conn.welcome(WELCOME, 0)
    writer.buffered = 990
    conn.deliver(message(1))
    assert writer.closed is not None
    assert writer.closed[0] == SLOW_CONSUMER
    assert not conn.is_open
    conn.deliver(message(2))
    assert [frame for frame, _ in writer.frames] == [WELCOME]
