"""Presence coalescing, sans-I/O: what a window of joins and leaves tells whom, and the welcome's member list."""

from __future__ import annotations

import json

from chat.frames import text_frame
from chat.presence import Announcement, RoomPresence
from chat.protocol import Member, Signal

ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")
CAROL = Member("c3", "carol")
ROOM = "lobby"


def join(member: Member) -> Signal:
    return Signal("join", ROOM, member)


def leave(member: Member) -> Signal:
    return Signal("leave", ROOM, member)


def told(announcement: Announcement | None) -> list[tuple[str, str, str]]:
    """The announcement's frames as (type, member id, name), in order."""
    if announcement is None:
        return []
    frames = [json.loads(line) for line in announcement.text.split("\n")]
    return [(frame["type"], frame["member"]["id"], frame["member"]["name"]) for frame in frames]


def members(listing: str) -> list[str]:
    return [member["id"] for member in json.loads(listing)]


def test_a_window_of_joins_is_one_announcement_in_order() -> None:
    """Every change of a window goes out together, in the order the members first changed."""
    presence = RoomPresence(ROOM, [])
    assert presence.changed(join(ALICE))
    assert not presence.changed(join(BOB))
    window = presence.announce()
    assert window is not None
    assert told(window.everyone) == [("join", "a1", "alice"), ("join", "b2", "bob")]
    assert presence.announce() is None


def test_a_join_and_a_leave_inside_one_window_cancel() -> None:
    """A member that joins and leaves within the window is announced to nobody."""
    presence = RoomPresence(ROOM, [ALICE])
    presence.changed(join(BOB))
    presence.changed(leave(BOB))
    window = presence.announce()
    assert window is not None
    assert window.everyone is None


def test_a_reconnect_inside_one_window_is_announced_to_nobody() -> None:
    """A member that leaves and comes back within the window (a reconnect) changes nothing."""
    presence = RoomPresence(ROOM, [ALICE, BOB])
    presence.changed(leave(BOB))
    presence.changed(join(BOB))
    window = presence.announce()
    assert window is not None
    assert window.everyone is None
    assert list(presence.told) == ["a1", "b2"]


def test_a_member_that_changed_name_is_told_as_a_leave_then_a_join() -> None:
    """The order of one member's leave and join is kept: the old name leaves, then the new one joins."""
    presence = RoomPresence(ROOM, [ALICE])
    presence.changed(leave(ALICE))
    presence.changed(join(Member("a1", "alicia")))
    window = presence.announce()
    assert window is not None
    assert told(window.everyone) == [("leave", "a1", "alice"), ("join", "a1", "alicia")]


def test_a_leave_of_a_member_nobody_was_told_of_is_not_announced() -> None:
    """Leaves and joins are told against the list as told: a leave of a stranger says nothing."""
    presence = RoomPresence(ROOM, [ALICE])
    presence.changed(leave(CAROL))
    presence.changed(join(ALICE))
    window = presence.announce()
    assert window is not None
    assert window.everyone is None


def test_a_newcomer_is_told_only_what_changed_after_its_welcome() -> None:
    """A newcomer's welcome lists the room as it is; its announcement holds only the changes after it."""
    presence = RoomPresence(ROOM, [ALICE])
    presence.changed(join(BOB))
    listing, position = presence.welcome(CAROL)
    assert members(listing) == ["a1", "b2", "c3"]
    presence.changed(join(CAROL))
    presence.changed(leave(ALICE))
    window = presence.announce()
    assert window is not None
    assert position is not None
    assert told(window.everyone) == [("join", "b2", "bob"), ("join", "c3", "carol"), ("leave", "a1", "alice")]
    assert told(window.since(position)) == [("join", "c3", "carol"), ("leave", "a1", "alice")]


def test_a_newcomer_welcomed_between_a_join_and_its_leave_is_told_the_leave() -> None:
    """What cancels out for the others is not cancelled for a newcomer whose welcome listed the member."""
    presence = RoomPresence(ROOM, [ALICE])
    presence.changed(join(BOB))
    listing, position = presence.welcome(CAROL)
    assert "b2" in members(listing)
    presence.changed(leave(BOB))
    window = presence.announce()
    assert window is not None
    assert position is not None
    assert window.everyone is None
    assert told(window.since(position)) == [("leave", "b2", "bob")]


def test_a_welcome_before_any_change_takes_everyones_announcement() -> None:
    """A member welcomed while nothing waits needs no position of its own."""
    presence = RoomPresence(ROOM, [ALICE])
    assert presence.welcome(BOB)[1] is None


def test_a_member_is_never_told_about_itself() -> None:
    """for_member drops the frames about that member, and leaves nothing when they were all about it."""
    presence = RoomPresence(ROOM, [])
    presence.changed(join(ALICE))
    presence.changed(join(BOB))
    window = presence.announce()
    assert window is not None
    assert window.everyone is not None
    assert told(window.everyone.for_member("a1")) == [("join", "b2", "bob")]
    assert told(window.everyone.for_member("c3")) == told(window.everyone)
    alone = Announcement([join(ALICE)])
    assert alone.for_member("a1") is None


def test_the_welcome_lists_the_newcomer_once() -> None:
    """The newcomer is in its welcome's members whether its join was already noted or not."""
    presence = RoomPresence(ROOM, [ALICE])
    assert members(presence.welcome(BOB)[0]) == ["a1", "b2"]
    presence.changed(join(BOB))
    assert members(presence.welcome(BOB)[0]) == ["a1", "b2"]
    assert members(RoomPresence(ROOM, []).welcome(BOB)[0]) == ["b2"]


def test_the_welcome_shows_the_newcomers_own_name() -> None:
    """A member id listed under another name (another tab) is listed with the newcomer's name."""
    presence = RoomPresence(ROOM, [ALICE, BOB])
    listing = json.loads(presence.welcome(Member("a1", "alicia"))[0])
    assert listing == [{"id": "a1", "name": "alicia"}, {"id": "b2", "name": "bob"}]


def test_the_member_list_is_encoded_once_per_change() -> None:
    """Welcomes between two changes reuse one encoding of the list; a change makes a new one."""
    presence = RoomPresence(ROOM, [ALICE, BOB])
    presence.welcome(CAROL)
    encoded = presence._listing
    presence.welcome(Member("d4", "dave"))
    assert presence._listing is encoded
    presence.changed(join(CAROL))
    presence.welcome(CAROL)
    assert presence._listing is not encoded


def test_changes_before_the_members_are_read_wait_and_apply_after_them() -> None:
    """While the room is being read, nothing is announced; then the changes apply on top of what was read."""
    presence = RoomPresence(ROOM)
    presence.changed(leave(ALICE))
    presence.changed(join(CAROL))
    assert presence.announce() is None
    assert presence.pending
    presence.reset([ALICE, BOB])
    assert members(presence.welcome(BOB)[0]) == ["b2", "c3"]
    window = presence.announce()
    assert window is not None
    assert told(window.everyone) == [("leave", "a1", "alice"), ("join", "c3", "carol")]


def test_an_announcement_is_one_message_under_batch_and_one_frame_each_otherwise() -> None:
    """``text`` is the frames joined by newlines (batch=1); ``wire`` is each frame's WebSocket bytes in turn."""
    announcement = Announcement([join(ALICE), leave(BOB)])
    assert announcement.text == join(ALICE).frame + "\n" + leave(BOB).frame
    assert announcement.wire == text_frame(join(ALICE).frame.encode()) + text_frame(leave(BOB).frame.encode())


def test_a_resync_notes_what_differs_from_the_backends_list_as_changes() -> None:
    """After a dropped link the backend's list is compared with the room's: who is missing leaves, who is new joins."""
    presence = RoomPresence(ROOM, [ALICE, BOB])
    assert presence.resync([BOB, CAROL])
    window = presence.announce()
    assert window is not None
    assert told(window.everyone) == [("leave", "a1", "alice"), ("join", "c3", "carol")]
    assert not presence.resync([BOB, CAROL])
    assert not presence.pending
