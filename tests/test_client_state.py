"""The client's room state, sans I/O: welcomes, recovery, dedupe, presence, the outbox and its acks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from chat.client import Join, Leave, Member, Message, Refused, Rejoined, Removed, Typing
from chat.client.exceptions import MessageTooLarge, OutboxFull, RoomClosed, ServerError
from chat.client.state import MAX_FRAME_BYTES, RoomState

ROOM = "lobby"
ME = {"id": "me1", "name": "ann"}
BOB = {"id": "b1", "name": "bob"}
CID = {"id": "c1", "name": "cid"}


def message(seq: int, text: str | None = None, sender: dict[str, str] = BOB) -> dict[str, Any]:
    return {"type": "message", "room": ROOM, "seq": seq, "from": sender, "text": text or f"m{seq}", "ts": 1000 + seq}


def welcome(
    seq: int,
    history: Sequence[int | dict[str, Any]] = (),
    epoch: str = "e1",
    recovered: bool = False,
    you: dict[str, str] = ME,
    members: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    items = [message(item) if isinstance(item, int) else item for item in history]
    return {
        "type": "welcome",
        "room": ROOM,
        "you": you,
        "members": members if members is not None else [you],
        "seq": seq,
        "epoch": epoch,
        "recovered": recovered,
        "history": items,
    }


def joined(seq: int = 0, history: Sequence[int] = (), **options: Any) -> RoomState:
    state = RoomState(ROOM)
    state.join_frame()
    state.welcome(welcome(seq, history, **options))
    return state


def seqs(events: list[Any]) -> list[int]:
    return [event.seq for event in events if isinstance(event, Message)]


# --- joining -------------------------------------------------------------------------------------


def test_the_first_join_asks_for_nothing_in_particular() -> None:
    """Before any welcome the join frame has no since/epoch."""
    frame = RoomState(ROOM).join_frame()
    assert frame["type"] == "join"
    assert frame["room"] == ROOM
    assert "since" not in frame
    assert "epoch" not in frame


def test_a_rejoin_asks_from_the_last_message_handed_over() -> None:
    """After a welcome and messages, the join carries since = the last seq seen and the epoch."""
    state = joined(3, [1, 2, 3])
    state.receive(message(4))
    state.disconnected()
    frame = state.join_frame()
    assert (frame["since"], frame["epoch"]) == (4, "e1")
    assert state.resume() == {"since": 4, "epoch": "e1"}


def test_the_first_welcome_hands_over_its_history_and_members() -> None:
    """History in seq order as Messages, no Rejoined, members and me set."""
    state = RoomState(ROOM)
    out = state.welcome(welcome(2, [1, 2], members=[ME, BOB]))
    assert seqs(out.events) == [1, 2]
    assert not any(isinstance(event, Rejoined) for event in out.events)
    assert out.events[0] == Message(ROOM, 1, Member("b1", "bob"), "m1", 1001)
    assert state.me == Member("me1", "ann")
    assert set(state.members) == {"me1", "b1"}
    assert state.joined
    assert state.last_seq == 2


@pytest.mark.parametrize(
    ("last", "frame", "recovered", "delivered", "last_after"),
    [
        (5, welcome(7, [6, 7], recovered=True), True, [6, 7], 7),
        (5, welcome(7, [5, 6, 7], recovered=True), True, [6, 7], 7),  # a repeat is dropped
        (5, welcome(3, [1, 2, 3], epoch="e2"), False, [1, 2, 3], 3),  # a new sequence starts over
        (5, welcome(3, [1, 2, 3], epoch="e2", recovered=True), False, [1, 2, 3], 3),  # another epoch never recovers
        (5, welcome(90, [41, 89, 90]), False, [41, 89, 90], 90),  # the same epoch, too much missed
        (5, welcome(9, [4, 5, 9]), False, [9], 9),  # not recovered: what was seen is still not repeated
    ],
)
def test_a_rejoin_says_whether_it_recovered(
    last: int, frame: dict[str, Any], recovered: bool, delivered: list[int], last_after: int
) -> None:
    """Rejoined first, with recovered only when the server says so under the same epoch; then what is new."""
    state = joined(last, list(range(1, last + 1)))
    state.disconnected()
    out = state.welcome(frame)
    assert out.events[0] == Rejoined(ROOM, recovered, frame["epoch"])
    assert seqs(out.events) == delivered
    assert state.recovered is recovered
    assert state.last_seq == last_after


def test_presence_changes_while_away_come_as_joins_and_leaves() -> None:
    """Members gone and come between two welcomes become Leave and Join; our own ids never do."""
    state = joined(0, members=[ME, BOB])
    state.disconnected()
    me_again = {"id": "me2", "name": "ann"}
    out = state.welcome(welcome(0, recovered=True, you=me_again, members=[me_again, ME, CID]))
    assert out.events[1:] == [Leave(ROOM, Member("b1", "bob")), Join(ROOM, Member("c1", "cid"))]
    assert set(state.members) == {"me2", "me1", "c1"}


# --- frames while joined ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "delivered"),
    [
        ([4, 5, 6], [4, 5, 6]),
        ([4, 4, 5], [4, 5]),
        ([2, 3, 4], [4]),
        ([5, 4, 6], [5, 6]),
    ],
)
def test_messages_are_handed_over_once_in_seq_order(incoming: list[int], delivered: list[int]) -> None:
    """A message whose seq is not past the last handed over is a repeat, and dropped."""
    state = joined(3, [1, 2, 3])
    events = [event for seq in incoming for event in state.receive(message(seq)).events]
    assert seqs(events) == delivered


def test_frames_before_the_welcome_are_ignored() -> None:
    """A message for a room not joined (the welcome has not come) changes nothing."""
    state = RoomState(ROOM)
    assert state.receive(message(1)).events == []
    assert state.last_seq == 0


@pytest.mark.parametrize(
    ("frame", "event", "members"),
    [
        ({"type": "join", "room": ROOM, "member": CID}, Join(ROOM, Member("c1", "cid")), {"me1", "b1", "c1"}),
        ({"type": "leave", "room": ROOM, "member": BOB}, Leave(ROOM, Member("b1", "bob")), {"me1"}),
        ({"type": "typing", "room": ROOM, "from": BOB}, Typing(ROOM, Member("b1", "bob")), {"me1", "b1"}),
        ({"type": "leave", "room": ROOM, "member": ME}, None, {"b1"}),  # ourselves, on an earlier connection
        ({"type": "typing", "room": ROOM, "from": ME}, None, {"me1", "b1"}),
        ({"type": "join", "room": ROOM, "member": {"id": 3}}, None, {"me1", "b1"}),  # malformed
    ],
)
def test_presence_frames(frame: dict[str, Any], event: Any, members: set[str]) -> None:
    """join/leave keep the member list; each becomes an event unless it is about us."""
    state = joined(members=[ME, BOB])
    out = state.receive(frame)
    assert out.events == ([event] if event else [])
    assert set(state.members) == members


# --- joins refused, rooms left -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "action"),
    [
        ("unavailable", "retry_join"),
        ("rate_limited", "retry_join"),
        ("forbidden", "refused"),
        ("too_many_rooms", "refused"),
    ],
)
def test_a_refused_join_is_retried_only_when_the_server_was_busy(code: str, action: str) -> None:
    """unavailable and rate_limited: join again later; anything else: Refused, for good."""
    state = RoomState(ROOM)
    ref = state.join_frame()["ref"]
    out = state.receive({"type": "error", "code": code, "detail": "no", "ref": ref, "room": ROOM})
    assert out.action == action
    assert isinstance(out.refusal, Refused) == (action == "refused")


@pytest.mark.parametrize(
    ("reason", "action", "events"),
    [("restart", "rejoin", []), ("removed", "removed", [Removed(ROOM)]), (None, None, [])],
)
def test_left(reason: str | None, action: str | None, events: list[Any]) -> None:
    """left: restart rejoins, removed ends the room (its outbox fails), a plain left answers our own leave."""
    state = joined()
    state.queue("waiting")
    frame: dict[str, Any] = {"type": "left", "room": ROOM, "ref": None}
    if reason:
        frame["reason"] = reason
    out = state.receive(frame)
    assert (out.action, out.events) == (action, events)
    assert state.joined is (reason is None)
    assert [type(error) for _, error in out.failed] == ([RoomClosed] if reason == "removed" else [])


# --- the outbox ------------------------------------------------------------------------------------


def test_a_message_goes_out_at_once_while_joined_and_resolves_on_its_ack() -> None:
    """queue gives the frame; the ack with its ref settles it with the seq; a second ack is ignored."""
    state = joined(3, [1, 2, 3])
    pending, frame = state.queue("hi")
    assert frame == {"type": "message", "room": ROOM, "text": "hi", "ref": pending.ref}
    ack = {"type": "ack", "room": ROOM, "ref": pending.ref, "seq": 4}
    assert state.receive(ack).acked == [(pending.ref, 4)]
    assert state.receive(ack).acked == []
    assert state.outbox == []


def test_messages_queued_while_away_go_out_in_order_after_the_welcome() -> None:
    """Not joined: nothing to send yet; the welcome sends them all, in the order queued."""
    state = joined()
    state.disconnected()
    queued = [state.queue(text) for text in ("one", "two", "three")]
    assert [frame for _, frame in queued] == [None, None, None]
    out = state.welcome(welcome(0, recovered=True))
    assert [frame["text"] for frame in out.send] == ["one", "two", "three"]
    assert [frame["ref"] for frame in out.send] == [pending.ref for pending, _ in queued]


@pytest.mark.parametrize(
    ("seen_before_drop", "history", "acked_seq", "resent"),
    [
        (False, [], None, True),  # it never made it: sent again
        (False, [message(1, "hi", ME)], 1, False),  # it made it, the ack was lost: not sent again
        (True, [], 1, False),  # it came back before the drop, without its ack
        (False, [message(1, "hi", BOB)], None, True),  # someone else's message with the same text is not ours
    ],
)
def test_a_message_in_flight_when_the_connection_went(
    seen_before_drop: bool, history: list[dict[str, Any]], acked_seq: int | None, resent: bool
) -> None:
    """After the rejoin a message sent but not acked is settled by our own message with its text, or sent again."""
    state = joined()
    pending, _ = state.queue("hi")
    if seen_before_drop:
        state.receive(message(1, "hi", ME))
    state.disconnected()
    out = state.welcome(welcome(len(history) + int(seen_before_drop), history, recovered=True))
    assert out.acked == ([] if acked_seq is None else [(pending.ref, acked_seq)])
    assert [frame["ref"] for frame in out.send] == ([pending.ref] if resent else [])


def test_an_error_answering_a_message_fails_it() -> None:
    """error with the message's ref: a ServerError with the code, and the message leaves the outbox."""
    state = joined()
    pending, _ = state.queue("x" * 10)
    out = state.receive({"type": "error", "code": "too_large", "detail": "long", "ref": pending.ref, "room": ROOM})
    [(ref, error)] = out.failed
    assert ref == pending.ref
    assert isinstance(error, ServerError)
    assert error.code == "too_large"
    assert state.outbox == []


def test_the_outbox_is_bounded() -> None:
    """Past max_outbox messages waiting, queue raises OutboxFull; an ack makes room again."""
    state = RoomState(ROOM, max_outbox=2)
    first, _ = state.queue("1")
    state.queue("2")
    with pytest.raises(OutboxFull):
        state.queue("3")
    state.welcome(welcome(0))
    state.receive({"type": "ack", "room": ROOM, "ref": first.ref, "seq": 1})
    state.queue("3")


def test_a_message_too_large_for_a_frame_is_refused_before_it_is_queued() -> None:
    """A frame past the server's limit would close the connection: MessageTooLarge, nothing queued."""
    state = joined()
    with pytest.raises(MessageTooLarge):
        state.queue("x" * MAX_FRAME_BYTES)
    assert state.outbox == []


def test_a_message_refused_as_rate_limited_waits_and_later_ones_wait_behind_it() -> None:
    """rate_limited: the message stays in the outbox, the next sends queue behind it, flush sends all in order."""
    state = joined()
    first, _ = state.queue("one")
    out = state.receive({"type": "error", "code": "rate_limited", "detail": "slow", "ref": first.ref, "room": ROOM})
    assert out.resend_later
    assert out.failed == []
    second, frame = state.queue("two")
    assert frame is None
    assert [frame["ref"] for frame in state.flush()] == [first.ref, second.ref]
    assert state.flush() == []


def test_nothing_is_flushed_while_not_joined() -> None:
    """Messages queued while away wait for the welcome."""
    state = RoomState(ROOM)
    state.queue("one")
    assert state.flush() == []
