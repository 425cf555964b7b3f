"""A room's event stream: bounded, ordered, and it ends (or fails) once closed and drained."""

from __future__ import annotations

import anyio
import pytest

from chat.client import Member, Message, Refused
from chat.client.stream import EventStream

pytestmark = pytest.mark.anyio


def event(seq: int) -> Message:
    return Message("lobby", seq, Member("b1", "bob"), f"m{seq}", 0)


async def test_events_come_out_in_order_and_the_stream_ends_after_the_last() -> None:
    """What was put before the close is read, then StopAsyncIteration."""
    stream = EventStream(10)
    for seq in (1, 2):
        await stream.put(event(seq))
    stream.close()
    assert [await stream.get(), await stream.get()] == [event(1), event(2)]
    with pytest.raises(StopAsyncIteration):
        await stream.get()


async def test_a_full_stream_holds_the_writer_until_the_reader_takes_one() -> None:
    """put waits while maxsize events are unread (so the socket is not read either)."""
    stream = EventStream(1)
    await stream.put(event(1))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stream.put, event(2))
            await anyio.wait_all_tasks_blocked()
            assert await stream.get() == event(1)
        assert await stream.get() == event(2)


async def test_a_stream_closed_with_an_error_raises_it_after_the_events() -> None:
    """close(Refused) ends the iteration with that error, and frees a writer waiting for room."""
    stream = EventStream(1)
    await stream.put(event(1))
    refusal = Refused("forbidden", "no")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stream.put, event(2))
            await anyio.wait_all_tasks_blocked()
            stream.close(refusal)
    assert await stream.get() == event(1)
    with pytest.raises(Refused):
        await stream.get()
