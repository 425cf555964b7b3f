"""The store contract: every durable store (SQLite, PostgreSQL) records rooms the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from chat.exceptions import Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings
from chat.stores import Store, open_store

pytestmark = pytest.mark.anyio

ALICE = Member("a1", "alice")
STORES = ["sqlite", "sqlite-loop", "postgresql"]
"""Every store; ``sqlite-loop`` is SQLite committing on the event loop's thread (``sqlite_writer``)."""


@pytest.fixture(params=STORES)
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings naming a fresh, empty store of each kind."""
    if request.param.startswith("sqlite"):
        writer = "loop" if request.param == "sqlite-loop" else "thread"
        return Settings(store=f"sqlite:///{tmp_path}/chat.db", sqlite_writer=writer)
    url: str = request.getfixturevalue("postgres_url")
    return Settings(store=url)


class Recorder:
    """A store's ``committed`` callback that remembers what it was told, in order."""

    def __init__(self) -> None:
        self.committed: list[tuple[Message, str]] = []
        self.changed = anyio.Event()

    def __call__(self, message: Message, epoch: str) -> None:
        self.committed.append((message, epoch))
        self.changed.set()


@pytest.fixture
async def opened(store_settings: Settings) -> AsyncIterator[Callable[..., object]]:
    """Open stores on ``store_settings`` (with changes); every one is stopped at the end."""
    stores: list[Store] = []

    async def open_(recorder: Recorder | None = None, **changes: object) -> Store:
        store = open_store(store_settings.store, store_settings.replace(**changes))
        await store.start(recorder or Recorder())
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.stop()


async def append_all(store: Store, room: str, texts: list[str]) -> list[Message]:
    """Append every text in one loop turn, then wait for all of them."""
    futures = [store.append(room, ALICE, text) for text in texts]
    with anyio.fail_after(10):
        return list(await asyncio.gather(*futures))


async def test_appends_get_consecutive_seqs_in_order(opened: Callable[..., object]) -> None:
    """Messages appended one after the other get seqs 1, 2, 3 of their room, in that order."""
    store = await opened()  # type: ignore[misc]
    messages = await append_all(store, "r", ["one", "two", "three"])
    assert [(m.seq, m.text, m.sender) for m in messages] == [(1, "one", ALICE), (2, "two", ALICE), (3, "three", ALICE)]


async def test_rooms_count_apart(opened: Callable[..., object]) -> None:
    """Each room has its own sequence."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "a", ["1", "2"])
    messages = await append_all(store, "b", ["1"])
    assert messages[0].seq == 1


async def test_committed_then_done_in_order(opened: Callable[..., object]) -> None:
    """``committed`` runs for each message before its ``done``, with one epoch, in seq order."""
    recorder = Recorder()
    store = await opened(recorder)  # type: ignore[misc]
    seen: list[tuple[str, int]] = []

    def done(future: asyncio.Future[Message]) -> None:
        message = future.result()
        assert recorder.committed[-1][0].seq >= message.seq
        seen.append(("done", message.seq))

    futures = [store.append("r", ALICE, str(n), done) for n in range(20)]
    with anyio.fail_after(10):
        await asyncio.gather(*futures)
    assert [m.seq for m, _ in recorder.committed] == list(range(1, 21))
    assert len({epoch for _, epoch in recorder.committed}) == 1
    assert seen == [("done", n) for n in range(1, 21)]


async def test_unknown_room_snapshot(opened: Callable[..., object]) -> None:
    """A room without messages is at seq 0 under the store's epoch, and is not listed."""
    store = await opened()  # type: ignore[misc]
    snapshot = await store.snapshot("nobody-here", None, None, 50)
    assert (snapshot.seq, snapshot.messages, snapshot.recovered) == (0, [], False)
    assert snapshot.epoch
    assert not await store.exists("nobody-here")
    assert await store.rooms() == []


async def test_snapshot_recovers_what_was_missed(opened: Callable[..., object]) -> None:
    """With the room's epoch and a kept ``since``, a snapshot holds exactly the messages after it."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "r", [str(n) for n in range(10)])
    epoch = (await store.snapshot("r", None, None, 0)).epoch
    snapshot = await store.snapshot("r", 7, epoch, 2)
    assert snapshot.recovered
    assert [m.seq for m in snapshot.messages] == [8, 9, 10]
    assert snapshot.seq == 10
    up_to_date = await store.snapshot("r", 10, epoch, 2)
    assert up_to_date.recovered
    assert up_to_date.messages == []


async def test_snapshot_without_recovery_shows_the_latest(opened: Callable[..., object]) -> None:
    """A wrong epoch, or a ``since`` beyond the room's seq, gets the latest ``count`` messages, not recovered."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "r", [str(n) for n in range(10)])
    epoch = (await store.snapshot("r", None, None, 0)).epoch
    for since, claimed in ((3, "other-epoch"), (11, epoch), (None, None)):
        snapshot = await store.snapshot("r", since, claimed, 4)
        assert not snapshot.recovered
        assert [m.seq for m in snapshot.messages] == [7, 8, 9, 10]


async def test_history_pages_back_to_the_first_message(opened: Callable[..., object]) -> None:
    """Paging with ``before`` reaches seq 1, each page oldest first, with whole frames."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "r", [f"m{n}" for n in range(1, 251)])
    seen: list[int] = []
    before: int | None = None
    while True:
        page = await store.history("r", before, 50)
        if not page:
            break
        assert [m.seq for m in page] == sorted(m.seq for m in page)
        seen = [m.seq for m in page] + seen
        before = page[0].seq
    assert seen == list(range(1, 251))
    last = (await store.history("r", None, 1))[0]
    assert Message.from_frame(last.frame) == last
    assert last.text == "m250"


async def test_history_of_unknown_room_is_empty(opened: Callable[..., object]) -> None:
    """A room without messages has no history."""
    store = await opened()  # type: ignore[misc]
    assert await store.history("nobody-here", None, 50) == []


async def test_rooms_and_exists(opened: Callable[..., object]) -> None:
    """Rooms with a message are listed, sorted, and exist."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "b", ["x"])
    await append_all(store, "a", ["y"])
    assert await store.rooms() == ["a", "b"]
    assert await store.exists("a")
    assert await store.healthy()


async def test_a_reopened_store_remembers(opened: Callable[..., object]) -> None:
    """After stop and start: same epoch, same seq, same history, and new messages continue the sequence."""
    first = await opened()  # type: ignore[misc]
    await append_all(first, "r", ["one", "two"])
    before = await first.snapshot("r", None, None, 10)
    await first.stop()
    second = await opened()  # type: ignore[misc]
    after = await second.snapshot("r", 0, before.epoch, 10)
    assert after.recovered
    assert (after.epoch, after.seq, after.messages) == (before.epoch, 2, before.messages)
    assert [m.seq for m in await append_all(second, "r", ["three"])] == [3]


async def test_retention_by_count(opened: Callable[..., object]) -> None:
    """With ``retention_messages``, a room keeps its latest N (pruned in the commit); older ones are gone."""
    store = await opened(retention_messages=5)  # type: ignore[misc]
    await append_all(store, "r", [str(n) for n in range(12)])
    assert [m.seq for m in await store.history("r", None, 100)] == [8, 9, 10, 11, 12]
    epoch = (await store.snapshot("r", None, None, 0)).epoch
    assert not (await store.snapshot("r", 2, epoch, 5)).recovered
    assert [m.seq for m in await append_all(store, "r", ["next"])] == [13]


async def test_stop_settles_every_append(opened: Callable[..., object]) -> None:
    """Appends on their way when the store stops are committed or fail with Unavailable; none hangs."""
    store = await opened()  # type: ignore[misc]
    futures = [store.append("r", ALICE, str(n)) for n in range(100)]
    with anyio.fail_after(10):
        await store.stop()
        results = await asyncio.gather(*futures, return_exceptions=True)
    committed = [r.seq for r in results if isinstance(r, Message)]
    assert all(isinstance(r, Message | Unavailable) for r in results)
    assert committed == list(range(1, len(committed) + 1))


async def test_each_room_has_its_own_epoch(opened: Callable[..., object]) -> None:
    """Rooms have different epochs, so one room's position never passes for another's."""
    store = await opened()  # type: ignore[misc]
    await append_all(store, "a", ["1", "2", "3"])
    await append_all(store, "b", ["1", "2", "3"])
    epoch_a = (await store.snapshot("a", None, None, 0)).epoch
    assert epoch_a != (await store.snapshot("b", None, None, 0)).epoch
    assert not (await store.snapshot("b", 1, epoch_a, 1)).recovered
