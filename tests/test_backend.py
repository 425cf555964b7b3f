"""The backend contract (every backend, through the ``settings`` fixture), then memory-only lifetimes."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from chat.backends import Backend, open_backend
from chat.backends.memory import MemoryBackend
from chat.backends.stored import StoredBackend
from chat.protocol import Member, Message, Signal
from chat.settings import Settings
from tests.redis_server import RedisServer
from tests.standins import EventSink

pytestmark = pytest.mark.anyio

COMBINATIONS = ["memory", "redis", "memory+sqlite", "redis+postgresql"]
"""Each backend on its own history, and with the durable store that suits it (``StoredBackend``):
SQLite belongs to one process, PostgreSQL is a cluster's record."""


@pytest.fixture(params=COMBINATIONS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The backend under test, recording in its own history or in a fresh store (Redis starts empty)."""
    backend, _, store = request.param.partition("+")
    url = "memory://"
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        server.command("FLUSHALL")
        url = server.url
    if store == "sqlite":
        return Settings(backend=url, store=f"sqlite:///{tmp_path}/chat.db")
    if store == "postgresql":
        return Settings(backend=url, store=request.getfixturevalue("postgres_url"))
    return Settings(backend=url)


ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")


def new_room() -> str:
    """A room no other test uses (backends such as Redis outlive one test)."""
    return "room-" + uuid.uuid4().hex[:12]


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[Backend, EventSink]]:
    """The backend the settings name, started with a recording ``deliver``, stopped afterwards."""
    backend = open_backend(settings)
    sink = EventSink()
    await backend.start(sink)
    try:
        yield backend, sink
    finally:
        await backend.stop()


async def publish(backend: Backend, room: str, count: int, sender: Member = ALICE) -> list[Message]:
    return [await backend.publish(room, sender, f"m{index}") for index in range(1, count + 1)]


def seqs(messages: list[Message]) -> list[int]:
    return [message.seq for message in messages]


# --- publish and delivery ------------------------------------------------------------------------


async def test_publish_numbers_messages_from_one(settings: Settings) -> None:
    """A room's messages get seq 1, 2, 3... in publish order."""
    room = new_room()
    async with started(settings) as (backend, _):
        assert seqs(await publish(backend, room, 3)) == [1, 2, 3]


async def test_rooms_have_their_own_sequences(settings: Settings) -> None:
    """Each room counts from 1 on its own."""
    one, two = new_room(), new_room()
    async with started(settings) as (backend, _):
        await publish(backend, one, 2)
        assert seqs(await publish(backend, two, 1)) == [1]
        assert seqs(await publish(backend, one, 1)) == [3]


async def test_published_message_carries_room_sender_text_and_time(settings: Settings) -> None:
    """publish returns the stored message: room, sender, text and a millisecond timestamp."""
    room = new_room()
    async with started(settings) as (backend, _):
        before = time.time_ns() // 1_000_000
        message = await backend.publish(room, BOB, "hé 🙂")
        after = time.time_ns() // 1_000_000
    assert (message.room, message.sender, message.text) == (room, BOB, "hé 🙂")
    assert before <= message.ts <= after


async def test_started_publishes_get_seqs_in_call_order(settings: Settings) -> None:
    """Publishes started without waiting (a member's messages on their way) get their seqs in call order."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        futures = [backend.start_publish(room, ALICE, f"m{index}") for index in range(1, 41)]
        messages = [await future for future in futures]
        assert [(message.seq, message.text) for message in messages] == [(i, f"m{i}") for i in range(1, 41)]
        received = [await sink.next() for _ in messages]
    assert received == messages


async def test_publish_done_gets_each_resolved_future_once_in_order(settings: Settings) -> None:
    """``done`` is called once per publish, with its future already resolved, in seq order."""
    room = new_room()
    calls: list[tuple[bool, int]] = []
    async with started(settings) as (backend, _):
        await backend.subscribe(room)

        def done(future: asyncio.Future[Message]) -> None:
            calls.append((future.done(), future.result().seq))

        futures = [backend.start_publish(room, ALICE, f"m{index}", done) for index in range(1, 6)]
        for future in futures:
            await future
    assert calls == [(True, seq) for seq in range(1, 6)]


async def test_memory_publish_calls_done_before_returning() -> None:
    """In one process a publish is done at once: ``done`` runs before start_publish returns."""
    settings = Settings()
    async with started(settings) as (backend, _):
        seen: list[int] = []
        future = backend.start_publish(new_room(), ALICE, "x", lambda f: seen.append(f.result().seq))
        assert seen == [1]
        assert future.result().seq == 1


async def test_default_start_publish_calls_done_from_the_future(settings: Settings) -> None:
    """A backend without its own start_publish runs publish in a task and calls ``done`` when it ends."""
    room = new_room()
    async with started(settings) as (backend, _):
        seen: list[int] = []
        future = Backend.start_publish(backend, room, ALICE, "x", lambda f: seen.append(f.result().seq))
        message = await future  # done was registered first: it has run when the awaiting task resumes
    assert seen == [message.seq]


async def test_subscribed_room_messages_are_delivered_in_order(settings: Settings) -> None:
    """Messages of a subscribed room reach ``deliver`` in seq order, as published."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        sent = await publish(backend, room, 5)
        received = [await sink.next() for _ in sent]
    assert all(isinstance(event, Message) for event in received)
    assert received == sent
    assert [event.frame for event in received if isinstance(event, Message)] == [message.frame for message in sent]


async def test_unsubscribed_room_messages_are_not_delivered(settings: Settings) -> None:
    """Events of a room never subscribed, or unsubscribed, do not reach ``deliver``."""
    watched, ignored, left = new_room(), new_room(), new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(watched)
        await backend.subscribe(left)
        await backend.unsubscribe(left)
        await backend.publish(ignored, ALICE, "no")
        await backend.publish(left, ALICE, "no")
        await backend.signal(Signal("typing", ignored, ALICE))
        marker = await backend.publish(watched, ALICE, "yes")
        event = await sink.next()
    assert isinstance(event, Message)
    assert (event.room, event.text, event.seq) == (watched, "yes", marker.seq)


async def test_typing_signal_is_delivered_and_not_stored(settings: Settings) -> None:
    """signal() delivers a typing event to subscribers and never enters history."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        await backend.signal(Signal("typing", room, BOB))
        event = await sink.next()
        assert await backend.history(room, None, 100) == []
    assert isinstance(event, Signal)
    assert (event.kind, event.room, event.member) == ("typing", room, BOB)


# --- history -------------------------------------------------------------------------------------


async def test_history_returns_latest_messages_oldest_first(settings: Settings) -> None:
    """history(None, limit) gives the latest ``limit`` messages, oldest first."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 10)
        assert seqs(await backend.history(room, None, 3)) == [8, 9, 10]


async def test_history_before_gives_messages_below_before(settings: Settings) -> None:
    """history(before, limit) gives up to ``limit`` messages with seq < before, oldest first."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 10)
        assert seqs(await backend.history(room, 6, 3)) == [3, 4, 5]
        assert seqs(await backend.history(room, 3, 50)) == [1, 2]


async def test_history_before_one_is_empty(settings: Settings) -> None:
    """Nothing comes before seq 1."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 3)
        assert await backend.history(room, 1, 50) == []


async def test_history_before_beyond_latest_gives_latest(settings: Settings) -> None:
    """A before past the latest seq acts like no before."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 4)
        assert seqs(await backend.history(room, 1000, 2)) == [3, 4]


async def test_history_before_a_huge_seq_gives_latest(settings: Settings) -> None:
    """before may be any integer >= 1, however large."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 3)
        assert seqs(await backend.history(room, 2**63, 2)) == [2, 3]


async def test_history_limit_larger_than_history_gives_everything(settings: Settings) -> None:
    """A generous limit returns all stored messages."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 4)
        assert seqs(await backend.history(room, None, 100)) == [1, 2, 3, 4]


async def test_history_keeps_text_and_sender(settings: Settings) -> None:
    """Stored messages come back as published."""
    room = new_room()
    async with started(settings) as (backend, _):
        sent = await backend.publish(room, BOB, "kept ✓")
        (stored,) = await backend.history(room, None, 1)
    assert stored == sent
    assert stored.frame == sent.frame


async def test_history_of_an_unknown_room_is_empty(settings: Settings) -> None:
    """A room nobody used has no history."""
    async with started(settings) as (backend, _):
        assert await backend.history(new_room(), None, 50) == []


async def test_history_is_capped_at_history_size(settings: Settings) -> None:
    """Only the latest ``history_size`` messages are kept; seq keeps counting (a durable store keeps them all)."""
    room = new_room()
    if settings.store:
        async with started(settings.replace(history_size=3, history_on_join=3)) as (backend, _):
            await publish(backend, room, 5)
            assert seqs(await backend.history(room, None, 100)) == [1, 2, 3, 4, 5]
        return
    async with started(settings.replace(history_size=3, history_on_join=3)) as (backend, _):
        await publish(backend, room, 5)
        assert seqs(await backend.history(room, None, 100)) == [3, 4, 5]
        assert seqs(await backend.history(room, 4, 100)) == [3]
        assert await backend.history(room, 3, 100) == []


# --- snapshot and recovery -----------------------------------------------------------------------


async def test_snapshot_of_a_new_room(settings: Settings) -> None:
    """A fresh room: seq 0, an epoch token, no history, not recovered."""
    async with started(settings) as (backend, _):
        snapshot = await backend.snapshot(new_room(), None, None)
    assert (snapshot.seq, snapshot.messages, snapshot.recovered) == (0, [], False)
    assert snapshot.epoch


async def test_snapshot_epoch_is_stable(settings: Settings) -> None:
    """The epoch stays the same while the room lives."""
    room = new_room()
    async with started(settings) as (backend, _):
        first = await backend.snapshot(room, None, None)
        await publish(backend, room, 2)
        second = await backend.snapshot(room, None, None)
    assert first.epoch == second.epoch
    assert second.seq == 2


async def test_rooms_have_different_epochs(settings: Settings) -> None:
    """Epochs are per room, so a client cannot carry one room's position into another."""
    async with started(settings) as (backend, _):
        one = await backend.snapshot(new_room(), None, None)
        two = await backend.snapshot(new_room(), None, None)
    assert one.epoch != two.epoch


async def test_snapshot_without_since_gives_latest_history_on_join(settings: Settings) -> None:
    """A plain join sees the latest ``history_on_join`` messages, not recovered."""
    room = new_room()
    async with started(settings.replace(history_on_join=3)) as (backend, _):
        await publish(backend, room, 5)
        snapshot = await backend.snapshot(room, None, None)
    assert (snapshot.seq, seqs(snapshot.messages), snapshot.recovered) == (5, [3, 4, 5], False)


async def test_snapshot_recovers_everything_after_since(settings: Settings) -> None:
    """since=N with the room's epoch gives every message after N, recovered."""
    room = new_room()
    async with started(settings.replace(history_on_join=2)) as (backend, _):
        await publish(backend, room, 6)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 1, epoch)
    assert (snapshot.seq, seqs(snapshot.messages), snapshot.recovered) == (6, [2, 3, 4, 5, 6], True)


async def test_snapshot_since_zero_recovers_all(settings: Settings) -> None:
    """since=0 recovers the whole history while it is all retained."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 3)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 0, epoch)
    assert (seqs(snapshot.messages), snapshot.recovered) == ([1, 2, 3], True)


async def test_snapshot_since_latest_recovers_nothing_missing(settings: Settings) -> None:
    """since equal to the latest seq: nothing missed, recovered with an empty history."""
    room = new_room()
    async with started(settings) as (backend, _):
        await publish(backend, room, 3)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 3, epoch)
    assert (snapshot.seq, snapshot.messages, snapshot.recovered) == (3, [], True)


async def test_snapshot_since_zero_in_an_empty_room_is_recovered(settings: Settings) -> None:
    """since=0 in a room with no message yet is a complete (empty) recovery."""
    room = new_room()
    async with started(settings) as (backend, _):
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 0, epoch)
    assert (snapshot.seq, snapshot.messages, snapshot.recovered) == (0, [], True)


async def test_snapshot_since_beyond_latest_is_not_recovered(settings: Settings) -> None:
    """since above the room's seq cannot be trusted: not recovered, latest history."""
    room = new_room()
    async with started(settings.replace(history_on_join=2)) as (backend, _):
        await publish(backend, room, 3)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 9, epoch)
    assert (snapshot.seq, seqs(snapshot.messages), snapshot.recovered) == (3, [2, 3], False)


async def test_snapshot_with_unknown_epoch_is_not_recovered(settings: Settings) -> None:
    """since with an epoch the room never had: not recovered, latest history."""
    room = new_room()
    async with started(settings.replace(history_on_join=2)) as (backend, _):
        await publish(backend, room, 4)
        snapshot = await backend.snapshot(room, 1, "not-this-rooms-epoch")
    assert (seqs(snapshot.messages), snapshot.recovered) == ([3, 4], False)


async def test_snapshot_with_since_but_no_epoch_is_not_recovered(settings: Settings) -> None:
    """since without an epoch cannot be checked: not recovered, latest history."""
    room = new_room()
    async with started(settings.replace(history_on_join=2)) as (backend, _):
        await publish(backend, room, 4)
        snapshot = await backend.snapshot(room, 1, None)
    assert (seqs(snapshot.messages), snapshot.recovered) == ([3, 4], False)


async def test_snapshot_gap_older_than_history_is_not_recovered(settings: Settings) -> None:
    """When messages after since were dropped from history: not recovered, latest history_on_join."""
    room = new_room()
    async with started(settings.replace(history_size=3, history_on_join=2)) as (backend, _):
        await publish(backend, room, 6)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 2, epoch)
    assert (snapshot.seq, seqs(snapshot.messages), snapshot.recovered) == (6, [5, 6], False)


async def test_snapshot_since_just_before_oldest_retained_is_recovered(settings: Settings) -> None:
    """since = oldest retained seq - 1 is still complete: every missed message is retained."""
    room = new_room()
    async with started(settings.replace(history_size=3, history_on_join=2)) as (backend, _):
        await publish(backend, room, 6)
        epoch = (await backend.snapshot(room, None, None)).epoch
        snapshot = await backend.snapshot(room, 3, epoch)
    assert (seqs(snapshot.messages), snapshot.recovered) == ([4, 5, 6], True)


# --- presence ------------------------------------------------------------------------------------


async def test_join_adds_the_member_and_announces_it(settings: Settings) -> None:
    """join() puts the member in members() and delivers a join signal."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        await backend.join(room, ALICE)
        event = await sink.next()
        assert await backend.members(room) == [ALICE]
    assert isinstance(event, Signal)
    assert (event.kind, event.room, event.member) == ("join", room, ALICE)


async def test_enter_announces_when_asked_and_gives_the_snapshot(settings: Settings) -> None:
    """enter() with announce joins the member (signal, members) and returns what snapshot() would; without, it only
    reads the snapshot."""
    room = new_room()
    async with started(settings.replace(history_on_join=2)) as (backend, sink):
        await backend.subscribe(room)
        await publish(backend, room, 4)
        for _ in range(4):
            await sink.next()
        epoch = (await backend.snapshot(room, None, None)).epoch
        entered = await backend.enter(room, ALICE, True, 1, epoch)
        event = await sink.next()
        assert await backend.members(room) == [ALICE]
        again = await backend.enter(room, BOB, False, None, None)
        assert await backend.members(room) == [ALICE]
    assert isinstance(event, Signal)
    assert (event.kind, event.member) == ("join", ALICE)
    assert (entered.seq, entered.epoch, seqs(entered.messages), entered.recovered) == (4, epoch, [2, 3, 4], True)
    assert (again.seq, seqs(again.messages), again.recovered) == (4, [3, 4], False)


async def test_members_lists_everyone_present(settings: Settings) -> None:
    """members() lists every member that joined and has not left."""
    room = new_room()
    async with started(settings) as (backend, _):
        await backend.join(room, ALICE)
        await backend.join(room, BOB)
        assert set(await backend.members(room)) == {ALICE, BOB}


async def test_leave_removes_the_member_and_announces_it(settings: Settings) -> None:
    """leave() takes the member out of members() and delivers a leave signal."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        await backend.join(room, ALICE)
        await backend.join(room, BOB)
        await backend.leave(room, ALICE)
        kinds = [await sink.next() for _ in range(3)]
        assert await backend.members(room) == [BOB]
    last = kinds[-1]
    assert isinstance(last, Signal)
    assert (last.kind, last.member) == ("leave", ALICE)


async def test_leave_of_an_absent_member_is_silent(settings: Settings) -> None:
    """Leaving a room one is not in announces nothing."""
    room = new_room()
    async with started(settings) as (backend, sink):
        await backend.subscribe(room)
        await backend.leave(room, BOB)
        await backend.leave(new_room(), BOB)
        await backend.publish(room, ALICE, "marker")
        event = await sink.next()
    assert isinstance(event, Message)
    assert event.text == "marker"


async def test_members_of_an_unknown_room_is_empty(settings: Settings) -> None:
    """A room nobody joined has no members."""
    async with started(settings) as (backend, _):
        assert await backend.members(new_room()) == []


async def test_presence_is_per_room(settings: Settings) -> None:
    """Joining one room does not make one present in another."""
    one, two = new_room(), new_room()
    async with started(settings) as (backend, _):
        await backend.join(one, ALICE)
        assert await backend.members(two) == []


async def test_backend_is_healthy_when_started(settings: Settings) -> None:
    """A started backend that can serve says so (once its link is up)."""
    async with started(settings) as (backend, _):
        await backend.subscribe(new_room())  # returns once the backend's link serves the room
        assert await backend.healthy()


async def test_backend_names_itself(settings: Settings) -> None:
    """The backend's name is its URL scheme family (a stored one's relay's)."""
    backend = open_backend(settings)
    if isinstance(backend, StoredBackend):
        assert backend.store.name == settings.store.split(":", 1)[0]
        backend = backend.relay_backend
    assert backend.name == settings.backend.split(":", 1)[0]


# --- memory only: lifetimes under a fake clock ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def memory(clock: FakeClock, **changes: object) -> MemoryBackend:
    return MemoryBackend("memory://", Settings().replace(**changes), clock=clock)


async def test_memory_room_idle_past_ttl_is_dropped_with_a_new_epoch() -> None:
    """A room without members for history_ttl seconds is forgotten: new epoch, seq 0, no history."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    old = await backend.snapshot("lobby", None, None)
    await publish(backend, "lobby", 3)
    clock.now += 61
    fresh = await backend.snapshot("lobby", 3, old.epoch)
    assert fresh.epoch != old.epoch
    assert (fresh.seq, fresh.messages, fresh.recovered) == (0, [], False)
    assert seqs(await publish(backend, "lobby", 1)) == [1]


async def test_memory_room_idle_within_ttl_is_kept() -> None:
    """A room idle for less than history_ttl keeps its epoch and history."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    await publish(backend, "lobby", 2)
    epoch = (await backend.snapshot("lobby", None, None)).epoch
    clock.now += 59
    snapshot = await backend.snapshot("lobby", 0, epoch)
    assert (snapshot.epoch, seqs(snapshot.messages), snapshot.recovered) == (epoch, [1, 2], True)


async def test_memory_room_with_members_is_never_dropped() -> None:
    """While someone is present the room lives, however long."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    await backend.join("lobby", ALICE)
    await publish(backend, "lobby", 1)
    epoch = (await backend.snapshot("lobby", None, None)).epoch
    clock.now += 10_000
    assert (await backend.snapshot("lobby", None, None)).epoch == epoch
    assert backend.room_count == 1


async def test_memory_ttl_counts_from_the_last_leave() -> None:
    """The idle time starts when the last member leaves, not when the room was made."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    await backend.join("lobby", ALICE)
    epoch = (await backend.snapshot("lobby", None, None)).epoch
    clock.now += 1000
    await backend.leave("lobby", ALICE)
    clock.now += 59
    assert (await backend.snapshot("lobby", None, None)).epoch == epoch
    clock.now += 2
    assert (await backend.snapshot("lobby", None, None)).epoch != epoch


async def test_memory_publish_into_an_empty_room_refreshes_its_ttl() -> None:
    """A message to a room without members restarts its idle time."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    epoch = (await backend.snapshot("lobby", None, None)).epoch
    clock.now += 50
    await publish(backend, "lobby", 1)
    clock.now += 50
    assert (await backend.snapshot("lobby", None, None)).epoch == epoch


async def test_memory_dropped_room_is_no_longer_counted() -> None:
    """room_count drops idle rooms past their TTL."""
    clock = FakeClock()
    backend = memory(clock, history_ttl=60.0)
    await publish(backend, "one", 1)
    await publish(backend, "two", 1)
    assert backend.room_count == 2
    clock.now += 61
    assert backend.room_count == 0
    assert await backend.history("one", None, 50) == []


async def test_memory_max_rooms_evicts_the_longest_idle_empty_room() -> None:
    """Beyond max_rooms, the room idle the longest is dropped first."""
    clock = FakeClock()
    backend = memory(clock, max_rooms=2)
    for room in ("one", "two", "three"):
        await publish(backend, room, 1)
        clock.now += 1
    assert backend.room_count == 2
    assert await backend.history("one", None, 50) == []
    assert seqs(await backend.history("two", None, 50)) == [1]
    assert seqs(await backend.history("three", None, 50)) == [1]


async def test_memory_max_rooms_eviction_order_follows_activity() -> None:
    """A room used again becomes the most recently idle, so another room is evicted first."""
    clock = FakeClock()
    backend = memory(clock, max_rooms=2)
    await publish(backend, "one", 1)
    clock.now += 1
    await publish(backend, "two", 1)
    clock.now += 1
    await publish(backend, "one", 1)
    clock.now += 1
    await publish(backend, "three", 1)
    assert backend.room_count == 2
    assert await backend.history("two", None, 50) == []
    assert seqs(await backend.history("one", None, 50)) == [1, 2]


async def test_memory_max_rooms_never_evicts_rooms_with_members() -> None:
    """Occupied rooms are not evicted, even beyond max_rooms."""
    clock = FakeClock()
    backend = memory(clock, max_rooms=1)
    await backend.join("one", ALICE)
    await backend.join("two", BOB)
    await publish(backend, "three", 1)
    assert set(await backend.members("one")) == {ALICE}
    assert set(await backend.members("two")) == {BOB}
    assert backend.room_count == 2


async def test_memory_events_go_nowhere_before_start() -> None:
    """Without start() (or after stop()) nothing is delivered, and publishing still works."""
    clock = FakeClock()
    backend = memory(clock)
    sink = EventSink()
    await backend.subscribe("lobby")
    assert seqs(await publish(backend, "lobby", 1)) == [1]
    await backend.start(sink)
    assert sink.pending() == []  # what was published before start is not handed over at start
    await backend.stop()
    await publish(backend, "lobby", 1)
    assert sink.pending() == []


async def test_memory_history_costs_the_garbage_collector_nothing() -> None:
    """Stored messages hold atomic values only, so a full history is not walked by every collection."""
    settings = Settings(history_size=5, history_on_join=5)
    backend = MemoryBackend("memory://", settings)
    room = new_room()
    await publish(backend, room, 8)
    gc.collect()
    history = backend._rooms[room].history
    assert len(history) == 5
    assert not any(gc.is_tracked(entry) for entry in history)
    recent = await backend.history(room, None, 5)
    assert [(m.seq, m.sender, m.text) for m in recent] == [(seq, ALICE, f"m{seq}") for seq in range(4, 9)]
