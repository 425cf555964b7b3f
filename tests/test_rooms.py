"""The room registry: the lock around subscribe/unsubscribe, fan-out, and the connection cap."""

from __future__ import annotations

import asyncio
import json

import anyio
import pytest

from chat.connection import Connection, DirectConnection, QueuedConnection
from chat.protocol import Member, Message, Restart, Signal
from chat.rooms import RoomRegistry
from tests.standins import WAIT, Gate, GatedBackend, RecordingSender, StandInWriter

pytestmark = pytest.mark.anyio

ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")
CAROL = Member("c3", "carol")


def connection(member: Member, room: str = "lobby") -> Connection:
    conn = QueuedConnection(RecordingSender(), member, room, 10_000, WAIT)
    conn.welcome('{"type":"welcome"}', 0)
    return conn


def queued(conn: Connection) -> int:
    """Characters waiting in the connection's buffer (fan-out only queues; nothing is sent here)."""
    return conn.buffered


def members_of(registry: RoomRegistry, room: str) -> set[str]:
    return {conn.member.id for conn in registry.rooms().get(room, [])}


# --- add and remove ------------------------------------------------------------------------------


async def test_first_add_subscribes_and_registers() -> None:
    """The room's first local member subscribes the room, then is registered."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    alice = connection(ALICE)
    await registry.add(alice)
    assert backend.calls == [("subscribe", "lobby")]
    assert registry.rooms() == {"lobby": [alice]}
    assert registry.room_count == 1


async def test_second_add_does_not_subscribe_again() -> None:
    """Later members of a room reuse the subscription."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    await registry.add(connection(ALICE))
    await registry.add(connection(BOB))
    assert backend.calls == [("subscribe", "lobby")]
    assert members_of(registry, "lobby") == {"a1", "b2"}


async def test_rooms_are_independent() -> None:
    """Each room subscribes once for itself."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    await registry.add(connection(ALICE, "one"))
    await registry.add(connection(BOB, "two"))
    assert backend.subscribed == {"one", "two"}
    assert registry.room_count == 2


async def test_last_remove_unsubscribes() -> None:
    """Removing the last local member unregisters the room and unsubscribes it."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    alice, bob = connection(ALICE), connection(BOB)
    await registry.add(alice)
    await registry.add(bob)
    assert await registry.remove(alice)
    assert backend.subscribed == {"lobby"}
    assert await registry.remove(bob)
    assert backend.subscribed == set()
    assert registry.rooms() == {}
    assert backend.calls == [("subscribe", "lobby"), ("unsubscribe", "lobby")]


async def test_remove_twice_returns_false_the_second_time() -> None:
    """Removing an already removed connection does nothing and says so."""
    registry = RoomRegistry(GatedBackend(), 10)
    alice = connection(ALICE)
    await registry.add(alice)
    assert await registry.remove(alice)
    assert not await registry.remove(alice)


async def test_remove_of_a_never_added_connection_returns_false() -> None:
    """A connection that was never registered is not removed and nothing is unsubscribed."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    await registry.add(connection(ALICE))
    assert not await registry.remove(connection(BOB))
    assert not await registry.remove(connection(CAROL, "elsewhere"))
    assert backend.calls == [("subscribe", "lobby")]


async def test_remove_of_a_stale_connection_with_the_same_id_leaves_the_live_one() -> None:
    """Only the registered connection object is removed, not another with the same member id."""
    registry = RoomRegistry(GatedBackend(), 10)
    live = connection(ALICE)
    await registry.add(live)
    assert not await registry.remove(connection(ALICE))
    assert registry.rooms() == {"lobby": [live]}


async def test_rooms_returns_a_copy() -> None:
    """Changing what rooms() returned does not change the registry."""
    registry = RoomRegistry(GatedBackend(), 10)
    await registry.add(connection(ALICE))
    snapshot = registry.rooms()
    snapshot["lobby"].clear()
    snapshot["other"] = []
    assert members_of(registry, "lobby") == {"a1"}
    assert registry.room_count == 1


# --- the lock ------------------------------------------------------------------------------------


async def test_concurrent_first_joins_subscribe_once_and_both_register() -> None:
    """Two first joins of one room racing: one subscribe, both members registered."""
    backend = GatedBackend()
    gate = backend.subscribe_gate = Gate()
    registry = RoomRegistry(backend, 10)
    alice, bob = connection(ALICE), connection(BOB)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(registry.add, alice)
            await gate.entered.wait()
            tg.start_soon(registry.add, bob)
            await anyio.wait_all_tasks_blocked()
            assert registry.rooms() == {}
            gate.open()
    assert backend.calls == [("subscribe", "lobby")]
    assert members_of(registry, "lobby") == {"a1", "b2"}


async def test_join_during_last_leave_resubscribes() -> None:
    """A join arriving while the last leave unsubscribes ends subscribed, with the new member registered."""
    backend = GatedBackend()
    registry = RoomRegistry(backend, 10)
    alice, bob = connection(ALICE), connection(BOB)
    await registry.add(alice)
    gate = backend.unsubscribe_gate = Gate()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(registry.remove, alice)
            await gate.entered.wait()
            tg.start_soon(registry.add, bob)
            await anyio.wait_all_tasks_blocked()
            gate.open()
    assert backend.calls == [("subscribe", "lobby"), ("unsubscribe", "lobby"), ("subscribe", "lobby")]
    assert backend.subscribed == {"lobby"}
    assert registry.rooms() == {"lobby": [bob]}


async def test_leave_during_first_join_does_not_leak_a_subscription() -> None:
    """A remove racing the add that is still subscribing waits for it, then unsubscribes: nothing leaks."""
    backend = GatedBackend()
    gate = backend.subscribe_gate = Gate()
    registry = RoomRegistry(backend, 10)
    alice = connection(ALICE)
    removed: list[bool] = []

    async def remove() -> None:
        removed.append(await registry.remove(alice))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(registry.add, alice)
            await gate.entered.wait()
            tg.start_soon(remove)
            await anyio.wait_all_tasks_blocked()
            assert removed == []
            gate.open()
    assert removed == [True]
    assert backend.subscribed == set()
    assert registry.rooms() == {}
    assert backend.calls == [("subscribe", "lobby"), ("unsubscribe", "lobby")]


async def test_add_to_another_room_waits_for_the_lock_too() -> None:
    """The lock is registry-wide: an add to another room waits, then completes."""
    backend = GatedBackend()
    gate = backend.subscribe_gate = Gate()
    registry = RoomRegistry(backend, 10)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(registry.add, connection(ALICE, "one"))
            await gate.entered.wait()
            tg.start_soon(registry.add, connection(BOB, "two"))
            await anyio.wait_all_tasks_blocked()
            assert backend.calls == [("subscribe", "one")]
            gate.open()
    assert backend.subscribed == {"one", "two"}


# --- fan-out -------------------------------------------------------------------------------------


async def test_messages_reach_every_member_including_the_sender() -> None:
    """A message is handed to every local member of its room, its sender too."""
    registry = RoomRegistry(GatedBackend(), 10)
    alice, bob = connection(ALICE), connection(BOB)
    await registry.add(alice)
    await registry.add(bob)
    message = Message("lobby", 1, ALICE, "hi", 0)
    registry.deliver(message)
    assert queued(alice) == queued(bob) == len(message.frame)
    assert alice.last_seq == bob.last_seq == 1


@pytest.mark.parametrize("kind", ["join", "leave", "typing"])
async def test_signals_skip_their_member(kind: str) -> None:
    """join, leave and typing go to the other members only."""
    backend = GatedBackend()
    backend.present = [ALICE] if kind == "leave" else []  # so that the leave is news
    registry = RoomRegistry(backend, 10)
    alice, bob, carol = connection(ALICE), connection(BOB), connection(CAROL)
    for conn in (alice, bob, carol):
        await registry.add(conn)
    signal = Signal(kind, "lobby", ALICE)  # type: ignore[arg-type]
    registry.deliver(signal)
    assert queued(alice) == 0
    assert queued(bob) == queued(carol) == len(signal.frame)


async def test_members_without_presence_get_no_joins_or_leaves_but_typing() -> None:
    """A connection with presence off (``presence=0``) misses join and leave, never typing or messages."""
    registry = RoomRegistry(GatedBackend(), 10)
    alice, bob = connection(ALICE), connection(BOB)
    bob.presence = False
    for conn in (alice, bob):
        await registry.add(conn)
    registry.deliver(Signal("join", "lobby", ALICE))
    registry.deliver(Signal("leave", "lobby", ALICE))
    assert queued(bob) == 0
    typing = Signal("typing", "lobby", ALICE)
    registry.deliver(typing)
    registry.deliver(Message("lobby", 1, ALICE, "hi", 0))
    assert queued(bob) == len(typing.frame) + len(Message("lobby", 1, ALICE, "hi", 0).frame)


async def test_events_of_other_rooms_are_not_delivered() -> None:
    """Fan-out is per room."""
    registry = RoomRegistry(GatedBackend(), 10)
    alice = connection(ALICE, "one")
    await registry.add(alice)
    registry.deliver(Message("two", 1, BOB, "hi", 0))
    registry.deliver(Signal("typing", "two", BOB))
    assert queued(alice) == 0


async def test_deliver_to_a_room_without_local_members_is_a_no_op() -> None:
    """Events for unknown rooms are dropped without error."""
    registry = RoomRegistry(GatedBackend(), 10)
    registry.deliver(Message("nowhere", 1, BOB, "hi", 0))
    assert registry.rooms() == {}


async def test_deliver_survives_a_member_closed_for_overflow() -> None:
    """A member whose buffer overflows is closed; the others still get the event."""
    registry = RoomRegistry(GatedBackend(), 10)
    small = QueuedConnection(RecordingSender(), ALICE, "lobby", 5, WAIT)
    bob = connection(BOB)
    await registry.add(small)
    await registry.add(bob)
    message = Message("lobby", 1, CAROL, "hello there", 0)
    registry.deliver(message)
    assert small.close_code == 1013
    assert queued(bob) == len(message.frame)


async def test_restart_closes_every_member_of_the_room_with_1012() -> None:
    """A room restarted under a new epoch closes its local members with 1012 so they rejoin."""
    registry = RoomRegistry(GatedBackend(), 10)
    alice, bob, carol = connection(ALICE), connection(BOB), connection(CAROL, "other")
    for conn in (alice, bob, carol):
        await registry.add(conn)
    registry.deliver(Restart("lobby", "new-epoch"))
    assert alice.close_code == bob.close_code == 1012
    assert carol.is_open


# --- presence, announced once per window ----------------------------------------------------------


def direct(member: Member, writer: StandInWriter, welcomed: bool = True) -> DirectConnection:
    conn = DirectConnection(writer, member, "lobby", 10_000)
    if welcomed:
        conn.welcome('{"type":"welcome"}', 0)
    writer.recorder.pending()
    writer.wires.clear()
    return conn


def sent_types(writer: StandInWriter) -> list[tuple[str, str]]:
    """(type, member id or text) of each frame written since the last call."""
    frames = [json.loads(action.text) for action in writer.recorder.pending() if hasattr(action, "text")]
    return [(frame["type"], frame["member"]["id"] if "member" in frame else frame.get("text", "")) for frame in frames]


async def test_joins_within_a_window_reach_each_member_in_one_write() -> None:
    """Two joins in one window: nothing goes out until it ends, then each member gets both frames in one write."""
    registry = RoomRegistry(GatedBackend(), 10, presence_window=WAIT)
    writer = StandInWriter()
    await registry.add(bob := direct(BOB, writer))
    registry.deliver(Signal("join", "lobby", ALICE))
    registry.deliver(Signal("join", "lobby", CAROL))
    assert sent_types(writer) == []
    registry.announce_pending()
    assert sent_types(writer) == [("join", "a1"), ("join", "c3")]
    assert len(writer.wires) == 1
    assert bob.is_open


async def test_the_window_ends_on_its_own() -> None:
    """Without anyone asking, a window's changes go out once the window has passed."""
    registry = RoomRegistry(GatedBackend(), 10, presence_window=0.01)
    writer = StandInWriter()
    await registry.add(direct(BOB, writer))
    registry.deliver(Signal("join", "lobby", ALICE))
    frame = await writer.recorder.next_sent()
    assert (frame["type"], frame["member"]["id"]) == ("join", "a1")


async def test_a_larger_rooms_window_is_longer_in_proportion_up_to_the_most() -> None:
    """Up to 10 local members a room waits ``presence_window``; beyond, in proportion to its size, capped."""
    registry = RoomRegistry(GatedBackend(), 100, presence_window=0.5, presence_window_max=2.0)
    sizes = {"small": 4, "medium": 30, "large": 60}
    for room, size in sizes.items():
        for index in range(size):
            await registry.add(connection(Member(f"{room}{index}", "m"), room))
    now = asyncio.get_running_loop().time()
    for room in sizes:
        registry.deliver(Signal("join", room, CAROL))
    waits = {room: timer.when() - now for room, timer in registry._timers.items()}
    assert waits == pytest.approx({"small": 0.5, "medium": 1.5, "large": 2.0}, abs=0.1)
    registry.announce_pending()
    assert registry._timers == {}


async def test_a_message_is_never_held_by_a_pending_announcement() -> None:
    """A message published after a join still waiting for its window goes out at once, before that join."""
    registry = RoomRegistry(GatedBackend(), 10, presence_window=WAIT)
    writer = StandInWriter()
    await registry.add(direct(BOB, writer))
    registry.deliver(Signal("join", "lobby", ALICE))
    registry.deliver(Message("lobby", 1, ALICE, "hi", 0))
    registry.deliver(Signal("typing", "lobby", ALICE))
    assert sent_types(writer) == [("message", "hi"), ("typing", "")]
    registry.announce_pending()
    assert sent_types(writer) == [("join", "a1")]


async def test_a_member_welcomed_within_the_window_is_told_only_what_came_after() -> None:
    """The welcome lists the room as it is; the window's end tells the newcomer only the later changes."""
    registry = RoomRegistry(GatedBackend(), 10, presence_window=WAIT)
    bob_writer, carol_writer = StandInWriter(), StandInWriter()
    await registry.add(direct(BOB, bob_writer))
    registry.deliver(Signal("join", "lobby", ALICE))
    carol = direct(CAROL, carol_writer, welcomed=False)
    await registry.add(carol)
    registry.deliver(Signal("join", "lobby", CAROL))
    listing = json.loads(registry.welcome_members(carol))
    carol.welcome('{"type":"welcome"}', 0)
    carol_writer.recorder.pending()
    assert [member["id"] for member in listing] == ["a1", "c3"]
    registry.deliver(Signal("leave", "lobby", ALICE))
    registry.announce_pending()
    assert sent_types(bob_writer) == [("join", "c3")]  # alice came and went within the window
    assert sent_types(carol_writer) == [("leave", "a1")]


async def test_a_member_not_yet_welcomed_is_told_nothing_its_welcome_will_list() -> None:
    """A connection registered but not welcomed when the window ends gets the changes in its welcome instead."""
    registry = RoomRegistry(GatedBackend(), 10, presence_window=WAIT)
    writer = StandInWriter()
    bob = direct(BOB, writer, welcomed=False)
    await registry.add(bob)
    registry.deliver(Signal("join", "lobby", ALICE))
    registry.announce_pending()
    assert writer.recorder.pending() == []
    assert [member["id"] for member in json.loads(registry.welcome_members(bob))] == ["a1", "b2"]


# --- the connection cap --------------------------------------------------------------------------


def test_admit_counts_up_to_the_cap() -> None:
    """admit() succeeds max_connections times, then refuses."""
    registry = RoomRegistry(GatedBackend(), 2)
    assert [registry.admit() for _ in range(3)] == [True, True, False]
    assert registry.connections == 2


def test_release_frees_a_place() -> None:
    """After release() another connection is admitted."""
    registry = RoomRegistry(GatedBackend(), 1)
    assert registry.admit()
    assert not registry.admit()
    registry.release()
    assert registry.connections == 0
    assert registry.admit()
