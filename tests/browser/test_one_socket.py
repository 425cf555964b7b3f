"""One WebSocket per page: every room the page is in shares it, and comes back with it after a restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .support import Person, Servers, page_url, require_browser
from .test_recovery import say_through_websocket, texts

require_browser()

from playwright.sync_api import Locator, expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Person]
ROOMS = ("north", "south", "east")


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
