"""``Inbox`` and ``Flag``: the lighter stand-ins for uvicorn's per-connection queue and event."""

from __future__ import annotations

import anyio
import pytest

from chat.uvicorn.standins import Flag, Inbox

pytestmark = pytest.mark.anyio


async def test_the_inbox_gives_its_items_in_order_and_waits_when_empty() -> None:
    """Items come out in the order they went in; a get on an empty inbox waits for the next put."""
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    async with anyio.create_task_group() as task_group:
        got: list[int] = []

        async def get() -> None:
            got.append(await inbox.get())

        task_group.start_soon(get)
        await anyio.wait_all_tasks_blocked()
        inbox.put_nowait(3)
    assert got == [3]


async def test_drained_is_called_when_the_last_item_is_taken() -> None:
    """``drained`` runs as the consumer takes the last item, not before."""
    calls: list[bool] = []
    inbox = Inbox()
    inbox.drained = lambda: calls.append(inbox.empty())
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    await inbox.get()
    assert calls == []
    await inbox.get()
    assert calls == [True]


async def test_the_flag_wakes_its_waiters_when_set() -> None:
    """A cleared flag makes ``wait`` wait until ``set``; a set flag returns at once."""
    flag = Flag()
    await flag.wait()
    flag.clear()
    woken = anyio.Event()
    async with anyio.create_task_group() as task_group:

        async def wait() -> None:
            await flag.wait()
            woken.set()

        task_group.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert not woken.is_set()
        flag.set()
    assert woken.is_set()
