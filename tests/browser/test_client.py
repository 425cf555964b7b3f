"""The web client as a person uses it: join from a link, chat, see members and typing, scroll, stay safe."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.e2e.server_process import ServerProcess

from .support import PHONE, WAIT_MS, Person, Servers, page_url, require_browser

require_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Person]
XSS = "<img src=x onerror=alert(1)>"


def live(person: Person) -> None:
    """Wait until the page says it is connected."""
    expect(person.status).to_have_attribute("data-status", "live")


def seed(server: ServerProcess, room: str, count: int) -> None:
    """Post ``count`` messages to ``room`` through a plain WebSocket client (as another program would)."""
    with connect(server.url(room, name="seeder")) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
        for index in range(1, count + 1):
            ws.send(json.dumps({"type": "message", "text": f"seed {index}", "ref": index}))
        while True:
            frame = json.loads(ws.recv(timeout=10))
            if frame["type"] == "ack" and frame["ref"] == count:
                return


def test_two_people_chat_and_another_room_sees_nothing(
    server: ServerProcess, open_page: OpenPage, artifacts: Path
) -> None:
    ann = open_page(page_url(server, room="garden", name="Ann"), "ann")
    bob = open_page(page_url(server, room="garden", name="Bob"), "bob")
    cat = open_page(page_url(server, room="kitchen", name="Cat"), "cat")
    for person in (ann, bob, cat):
        live(person)

    # Joined from the link alone, and the member list is kept current by welcome and join.
    expect(ann.members).to_have_text(["Ann", "Bob"])
    expect(bob.members).to_have_text(["Ann", "Bob"])
    expect(ann.page.locator("#member-list .self")).to_contain_text("Ann")
    expect(ann.message_box).to_be_focused()

    ann.say("Morning Bob! The tomatoes are ripe.")
    expect(bob.message("tomatoes")).to_have_count(1)
    expect(bob.message("tomatoes").locator(".author")).to_have_text("Ann")
    expect(bob.message("tomatoes").locator("time")).to_have_text(re.compile(r"\d{1,2}:\d{2}"))
    expect(bob.message("tomatoes")).not_to_have_class(re.compile(r"\bmine\b"))
    expect(ann.message("tomatoes")).to_have_class(re.compile(r"\bmine\b"))
    expect(ann.message_box).to_be_focused()
    expect(ann.message_box).to_have_value("")

    bob.say("Great, I'll bring a basket.")
    bob.say("And the scissors.")
    expect(ann.messages).to_have_count(3)
    expect(ann.message("basket").locator(".author")).to_have_text("Bob")
    expect(bob.messages).to_have_count(3)
    assert ann.seqs() == bob.seqs() == [1, 2, 3]

    # The other room saw none of it, and its member list has only its own member.
    expect(cat.members).to_have_text(["Cat"])
    expect(cat.messages).to_have_count(0)
    cat.say("anyone in the kitchen?")
    expect(cat.messages).to_have_count(1)
    expect(ann.messages).to_have_count(3)

    ann.page.screenshot(path=artifacts / "browser-two-people.png")
    # Everything the page loaded came from the server itself: no CDN, nothing from outside.
    assert ann.requests, "the page made no request at all?"
    outside = [url for url in ann.requests if not url.startswith(f"http://{server.base}/")]
    assert not outside, outside

    # Bob leaves: the member list follows.
    bob.page.close()
    expect(ann.members).to_have_text(["Ann"])


def test_untrusted_text_is_never_html(server: ServerProcess, open_page: OpenPage) -> None:
    eve = open_page(page_url(server, room="xss", name=XSS), "eve")
    ann = open_page(page_url(server, room="xss", name="Ann"), "ann")
    live(eve)
    live(ann)
    eve.say(XSS)
    eve.say("<script>alert(2)</script><b>bold?</b>")
    expect(ann.messages).to_have_count(2)
    expect(ann.message("onerror").locator(".text")).to_have_text(XSS)
    expect(ann.message("onerror").locator(".author")).to_have_text(XSS)
    expect(ann.members.filter(has_text="onerror")).to_have_text(XSS)
    expect(eve.page.locator("#me-name")).to_have_text(XSS)
    for person in (ann, eve):
        expect(person.page.locator("#app img, #app script, #app b")).to_have_count(0)
    # A dialog (the alert) would have failed the test through the open_page fixture.


def test_typing_indicator_shows_and_is_throttled(server: ServerProcess, open_page: OpenPage) -> None:
    ann = open_page(page_url(server, room="typing", name="Ann"), "ann")
    bob = open_page(page_url(server, room="typing", name="Bob"), "bob")
    live(ann)
    live(bob)
    expect(ann.members).to_have_count(2)
    typing = ann.page.locator("#typing")
    expect(typing).to_have_text("")

    started = time.monotonic()
    bob.message_box.press_sequentially("I am writing a long reply", delay=40)
    expect(typing).to_have_text("Bob is typing…")
    # Typing frames go out at most every 2 s, however many keys are pressed.
    frames = len(bob.frames_of_type("typing"))
    assert 1 <= frames <= 1 + int((time.monotonic() - started) / 2), frames
    bob.message_box.press("Enter")
    expect(ann.message("long reply")).to_have_count(1)
    expect(typing).to_have_text("")


def test_join_form_address_and_several_rooms(server: ServerProcess, open_page: OpenPage) -> None:
    ann = open_page(page_url(server), "ann")
    page = ann.page
    expect(page.get_by_role("heading", name="Join a room")).to_be_visible()
    page.get_by_label("Your name").fill("Ann Lee")
    page.get_by_label("Room", exact=True).fill("bad room!")
    page.get_by_label("Room", exact=True).press("Enter")
    expect(page.locator("#setup-room-error")).to_contain_text("letters, digits")
    page.get_by_label("Room", exact=True).fill("attic")
    page.get_by_label("Room", exact=True).press("Enter")
    live(ann)
    expect(page).to_have_url(re.compile(r"\?room=attic&name=Ann\+Lee$"))
    expect(ann.message_box).to_be_focused()

    # A second room from the sidebar: it becomes the active one, and the address keeps both.
    page.get_by_label("Join another room").fill("cellar")
    page.get_by_label("Join another room").press("Enter")
    expect(page.locator("#room-title")).to_have_text("#cellar")
    live(ann)
    expect(page).to_have_url(re.compile(r"\?room=cellar&name=Ann\+Lee&rooms=attic%2Ccellar$"))
    # Both rooms on the page's one socket: the second joined by a join frame, not a socket of its own.
    assert [join["room"] for join in ann.sent_of_type("join")] == ["attic", "cellar"]
    assert len(ann.socket_urls) == 1, ann.socket_urls
    ann.say("down in the cellar")
    page.locator("[data-room=attic] .room-button").click()
    expect(page.locator("#room-title")).to_have_text("#attic")
    expect(ann.messages).to_have_count(0)
    expect(page).to_have_url(re.compile(r"\?room=attic&"))

    # A message in the room not on screen counts as unread there.
    bob = open_page(page_url(server, room="cellar", name="Bob"), "bob")
    live(bob)
    bob.say("hello from the cellar")
    expect(page.locator("[data-room=cellar] .badge")).to_have_text("1 unread")

    # The address alone brings both rooms back.
    page.reload()
    live(ann)
    expect(page.locator("#room-list > li")).to_have_count(2)
    expect(page.locator("#room-title")).to_have_text("#attic")
    page.locator("[data-room=cellar] .room-button").click()
    expect(ann.messages).to_have_count(2)

    # Leaving a room takes it out of the sidebar and the address.
    page.get_by_role("button", name="Leave cellar").click()
    expect(page.locator("#room-list > li")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"\?room=attic&name=Ann\+Lee$"))
    assert [leave["room"] for leave in ann.sent_of_type("leave")] == ["cellar"]
    assert len(ann.socket_urls) == 2, ann.socket_urls  # one per page load
    assert ann.sockets[-1] in ann.open_sockets(), "leaving a room keeps the page's socket for the others"
    expect(bob.members).to_have_text(["Bob"])


def test_history_on_demand_and_scrolling(server: ServerProcess, open_page: OpenPage) -> None:
    seed(server, "library", 120)
    ann = open_page(page_url(server, room="library", name="Ann"), "ann")
    live(ann)
    expect(ann.messages).to_have_count(50)
    assert ann.seqs() == list(range(71, 121))
    scroller = ann.page.locator("#scroller")

    def wait_at_bottom() -> None:
        """Wait (bounded) until the scroller is at the bottom: the client scrolls after it renders."""
        at_bottom = "s => s.scrollHeight - s.scrollTop - s.clientHeight < 2"
        ann.page.wait_for_function(at_bottom, arg=scroller.element_handle(), timeout=WAIT_MS)

    wait_at_bottom()

    # Older history on demand: scrolling up to the top fetches the previous page and keeps the reader's place.
    scroller.hover()
    ann.page.mouse.wheel(0, -50_000)
    expect(ann.messages).to_have_count(100)
    expect(ann.message("seed 71")).to_be_in_viewport()
    assert not scroller.evaluate("s => s.scrollTop < 50"), "the older page went above what the reader was reading"
    # ... and so does the button, for the rest.
    ann.page.get_by_role("button", name="Load older messages").click()
    expect(ann.messages).to_have_count(120)
    expect(ann.page.locator("#older-status")).to_have_text("This is the beginning of the room.")
    expect(ann.page.get_by_role("button", name="Load older messages")).to_be_hidden()
    assert ann.seqs() == list(range(1, 121))

    # Reading older messages: a new one does not move the page; a button offers to jump down.
    scroller.evaluate("s => s.scrollTop = 200")
    seed(server, "library", 1)
    expect(ann.messages).to_have_count(121)
    assert scroller.evaluate("s => s.scrollTop") == 200
    jump = ann.page.get_by_role("button", name="1 new message")
    expect(jump).to_be_visible()
    jump.click()
    expect(jump).to_be_hidden()
    wait_at_bottom()

    # At the bottom it stays at the bottom.
    seed(server, "library", 1)
    expect(ann.messages).to_have_count(122)
    wait_at_bottom()


def test_errors_are_shown_inline(servers: Servers, open_page: OpenPage) -> None:
    strict = servers.start(max_text=40, rate_burst=3, rate_per_second=0.2)
    ann = open_page(page_url(strict, room="strict", name="Ann"), "ann")
    live(ann)
    ann.say("x" * 41)
    error = ann.page.locator("#errors .error")
    expect(error).to_have_attribute("data-code", "too_large")
    expect(error).to_contain_text("too long")
    failed = ann.page.locator(".outbox .pending.failed")
    expect(failed).to_have_count(1)
    failed.get_by_role("button", name="Edit").click()
    expect(ann.message_box).to_have_value("x" * 41)
    expect(failed).to_have_count(0)

    # Faster than the rate limit allows: refused inline, with a way to retry.
    for index in range(5):
        ann.say(f"quick {index}")
    expect(error).to_have_attribute("data-code", "rate_limited")
    expect(error).to_contain_text("too fast")
    expect(failed.first.get_by_role("button", name="Retry")).to_be_visible()
    expect(ann.status).to_have_attribute("data-status", "live")


def test_phone_width(server: ServerProcess, open_page: OpenPage, artifacts: Path) -> None:
    bob = open_page(page_url(server, room="phone", name="Bob"), "bob")
    live(bob)
    bob.say("Are you on your phone?")
    ann = open_page(page_url(server, room="phone", name="Ann"), "ann", viewport=PHONE, is_mobile=True, has_touch=True)
    live(ann)
    page = ann.page
    expect(ann.message("phone")).to_have_count(1)
    ann.say("Yes, and it fits the screen.")
    expect(bob.message("fits")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = ann.message_box.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= PHONE["width"]
    assert box["y"] + box["height"] <= PHONE["height"]
    expect(page.locator("#status")).to_be_in_viewport()

    # The sidebar is a drawer: closed, then opened from the header.
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.get_by_role("button", name="Rooms and members").click()
    expect(ann.members).to_have_count(2)
    expect(page.locator("#sidebar")).to_be_in_viewport(ratio=1)
    page.screenshot(path=artifacts / "browser-phone-drawer.png")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.screenshot(path=artifacts / "browser-phone.png")


def test_mounted_under_a_prefix(servers: Servers, open_page: OpenPage) -> None:
    host = servers.start_prefixed("tests.browser.prefixed_app:create")
    ann = open_page(page_url(host, prefix="/chat", room="nested", name="Ann"), "ann")
    live(ann)
    assert ann.socket_urls == [f"ws://{host.base}/chat/ws?name=Ann"]
    ann.say("served from /chat/")
    expect(ann.message("served")).to_have_count(1)
    # Without the trailing slash the app redirects to its mount point, and the client still works.
    bob = open_page(f"http://{host.base}/chat?room=nested&name=Bob", "bob")
    live(bob)
    expect(bob.message("served")).to_have_count(1)
