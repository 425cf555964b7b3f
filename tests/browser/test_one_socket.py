"""One WebSocket per page: every room the page is in shares it, and comes back with it after a restart."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable

import pytest

from tests.e2e.server_process import ServerProcess

from .support import Person, Servers, page_url, require_browser
from .test_recovery import say_through_websocket, texts

require_browser()

from playwright.sync_api import Locator, expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Person]
ROOMS = ("north", "south", "east")
API_KEY = "operator-key-for-tests"


def live(person: Person) -> None:
    expect(person.status).to_have_attribute("data-status", "live")


def pending(person: Person) -> Locator:
    """The messages of the room on screen still on their way."""
    return person.page.locator(".view:not([hidden]) > .outbox > .pending")


def show(person: Person, room: str) -> None:
    """Put ``room`` on screen from the sidebar."""
    person.page.locator(f"[data-room={room}] .room-button").click()
    expect(person.page.locator("#room-title")).to_have_text(f"#{room}")


def test_three_rooms_share_one_socket_and_all_recover_after_a_restart(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start(store=None, rate_per_second=0)  # a durable store: the rooms outlive the process
    ann = open_page(page_url(server, room="north", rooms="north,south", name="Ann"), "ann")
    live(ann)
    ann.page.get_by_label("Join another room").fill("east")
    ann.page.get_by_label("Join another room").press("Enter")
    expect(ann.page.locator("#room-title")).to_have_text("#east")
    live(ann)
    epochs = {room: say_through_websocket(server, room, f"bob before, in {room}") for room in ROOMS}
    for room in ROOMS:
        show(ann, room)
        live(ann)
        expect(ann.messages).to_have_count(1)

    # Three rooms, one socket: each room joined by a frame on it.
    assert ann.socket_urls == [f"ws://{server.base}/ws?name=Ann"], ann.socket_urls
    assert sorted(join["room"] for join in ann.sent_of_type("join")) == sorted(ROOMS)

    servers.stop(server)
    for room in ROOMS:
        show(ann, room)
        expect(ann.status).to_have_attribute("data-status", "reconnecting")
        ann.say(f"ann while down, in {room}")
        expect(pending(ann)).to_contain_text("Waiting for the connection")
    joins_before = len(ann.sent_of_type("join"))

    server = servers.rerun(server)  # same folder, same store
    for room in ROOMS:  # racing the page's rejoin: each lands in the recovered history or live, never lost
        assert say_through_websocket(server, room, f"bob after, in {room}") == epochs[room]
    for room in ROOMS:
        show(ann, room)
        live(ann)
        expect(ann.messages).to_have_count(3)
        assert sorted(texts(ann)) == sorted(
            [f"bob before, in {room}", f"ann while down, in {room}", f"bob after, in {room}"]
        ), texts(ann)
        assert texts(ann)[0] == f"bob before, in {room}"
        assert ann.seqs() == [1, 2, 3]
        expect(pending(ann)).to_have_count(0)
        expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)

    # One socket again, every room rejoined on it once, each with its own since and epoch.
    assert len(ann.open_sockets()) == 1
    assert all(url == f"ws://{server.base}/ws?name=Ann" for url in ann.socket_urls), ann.socket_urls
    rejoins = ann.sent_of_type("join")[joins_before:]
    assert sorted((join["room"], join["since"], join["epoch"]) for join in rejoins) == sorted(
        (room, 1, epochs[room]) for room in ROOMS
    ), rejoins


def test_a_join_past_the_room_limit_is_refused_in_that_room_alone(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start(max_rooms_per_connection=2, rate_per_second=0)
    ann = open_page(page_url(server, room="north", rooms="north,south,east", name="Ann"), "ann")
    live(ann)
    show(ann, "east")
    expect(ann.status).to_have_attribute("data-status", "refused")
    expect(ann.status).to_contain_text("too many rooms")
    expect(ann.page.locator("[data-room=east] .room-dot")).to_have_class(re.compile(r"\brefused\b"))
    for room in ("north", "south"):
        expect(ann.page.locator(f"[data-room={room}] .room-dot")).to_have_class(re.compile(r"\blive\b"))
    assert len(ann.socket_urls) == 1, ann.socket_urls

    # Out of one room, the person tries again: the refused room joins on the same socket.
    ann.page.get_by_role("button", name="Leave north").click()
    show(ann, "east")
    ann.page.get_by_role("button", name="Try again").click()
    live(ann)
    ann.say("in at last")
    expect(ann.message("in at last")).to_have_count(1)
    assert len(ann.socket_urls) == 1, ann.socket_urls


def test_removed_from_one_room_the_page_stays_in_the_others(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start(api_key=API_KEY, rate_per_second=0)
    ann = open_page(page_url(server, room="north", rooms="north,south", name="Ann"), "ann")
    bob = open_page(page_url(server, room="south", name="Bob"), "bob")
    live(ann)
    live(bob)
    ann.say("about to go")
    expect(ann.messages).to_have_count(1)
    ann_id = ann.page.locator("#member-list .self").get_attribute("data-member")
    assert ann_id

    remove(server, "north", ann_id)
    expect(ann.status).to_have_attribute("data-status", "refused")
    expect(ann.status).to_contain_text("removed")
    expect(ann.message("about to go")).to_have_count(1)  # what was said stays readable

    # The other room is untouched, on the same socket.
    show(ann, "south")
    live(ann)
    bob.say("still here?")
    expect(ann.message("still here?")).to_have_count(1)
    assert len(ann.socket_urls) == 1, ann.socket_urls
    assert [join["room"] for join in ann.sent_of_type("join")].count("north") == 1, "removed: no rejoin by itself"

    # The person asks to come back: the room rejoins where it was.
    show(ann, "north")
    ann.page.get_by_role("button", name="Try again").click()
    live(ann)
    rejoin = ann.sent_of_type("join")[-1]
    assert (rejoin["room"], rejoin["since"]) == ("north", 1), rejoin
    ann.say("back")
    expect(ann.messages).to_have_count(2)
    assert ann.seqs() == [1, 2]
    expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)


def test_a_new_name_reconnects_the_one_socket_and_the_rooms_follow(server: ServerProcess, open_page: OpenPage) -> None:
    ann = open_page(page_url(server, room="rename-a", rooms="rename-a,rename-b", name="Ann"), "ann")
    bob = open_page(page_url(server, room="rename-b", name="Bob"), "bob")
    live(ann)
    live(bob)
    bob.say("hello Ann")
    show(ann, "rename-b")
    expect(ann.message("hello Ann")).to_have_count(1)

    ann.page.locator("#change-name").click()
    ann.page.get_by_label("Your name").fill("Ann Lee")
    ann.page.get_by_role("button", name="Save").click()
    expect(bob.members).to_have_text(["Ann Lee", "Bob"])
    live(ann)
    assert ann.socket_urls == [f"ws://{server.base}/ws?name=Ann", f"ws://{server.base}/ws?name=Ann+Lee"]
    rejoins = ann.sent_of_type("join")[2:]
    assert sorted((join["room"], join.get("since")) for join in rejoins) == [("rename-a", 0), ("rename-b", 1)]
    expect(ann.message("hello Ann")).to_have_count(1)
    expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)
    ann.say("new name, same rooms")
    expect(bob.message("same rooms").locator(".author")).to_have_text("Ann Lee")
    show(ann, "rename-a")
    live(ann)
    assert len(ann.open_sockets()) == 1


def remove(server: ServerProcess, room: str, member: str) -> None:
    """Have the operator remove ``member`` from ``room`` (the operator API's DELETE)."""
    request = urllib.request.Request(
        f"http://{server.base}/api/rooms/{room}/members/{member}",
        method="DELETE",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response) == {"removed": member, "room": room}
