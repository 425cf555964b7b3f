"""Reconnecting: after a dropped connection, a server restart (memory, the default store, Redis), and a refused join."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.e2e.server_process import ServerProcess
from tests.redis_server import RedisServer

from .proxy import Proxy
from .support import Person, Servers, page_url, require_browser

require_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Person]


def live(person: Person) -> None:
    expect(person.status).to_have_attribute("data-status", "live")


def texts(person: Person) -> list[str]:
    return person.messages.locator(".text").all_inner_texts()


def say_through_websocket(server: ServerProcess, room: str, *texts: str) -> str:
    """Post messages to ``room`` with a plain WebSocket client, and wait for their acks; returns the room's epoch."""
    with connect(server.url(room, name="Bob")) as ws:
        welcome = json.loads(ws.recv(timeout=10))
        assert welcome["type"] == "welcome", welcome
        for ref, text in enumerate(texts, 1):
            ws.send(json.dumps({"type": "message", "text": text, "ref": ref}))
        for _ in range(10 * len(texts) + 10):  # its acks, and what else the room sends meanwhile, at most
            if (frame := json.loads(ws.recv(timeout=10))).get("ref") == len(texts):
                break
        else:
            raise AssertionError(f"no answer to message {len(texts)} among the frames that came")
        assert frame["type"] == "ack", frame
        epoch: str = welcome["epoch"]
        return epoch


@pytest.fixture
def proxy_to() -> Iterator[Callable[[ServerProcess], Proxy]]:
    """``proxy_to(server)``: a proxy in front of ``server`` that the test can cut; closed afterwards."""
    proxies: list[Proxy] = []

    def make(server: ServerProcess) -> Proxy:
        proxy = Proxy(server.port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_dropped_connection_recovers_every_missed_message_once(
    server: ServerProcess, open_page: OpenPage, proxy_to: Callable[[ServerProcess], Proxy]
) -> None:
    proxy = proxy_to(server)
    ann = open_page(f"http://{proxy.base}/?room=tunnel&name=Ann", "ann")
    bob = open_page(page_url(server, room="tunnel", name="Bob"), "bob")
    live(ann)
    live(bob)
    bob.say("before the tunnel")
    expect(ann.message("before the tunnel")).to_have_count(1)

    proxy.cut()
    expect(ann.status).to_have_attribute("data-status", "reconnecting")
    expect(ann.status).to_contain_text("retrying in")
    for index in range(1, 4):
        bob.say(f"missed {index}")
    expect(bob.messages).to_have_count(4)
    ann.say("written in the tunnel")
    expect(ann.page.locator(".outbox .pending")).to_contain_text("Waiting for the connection")

    # Backoff: each wait is longer than the one before (0.25-0.5 s, 0.5-1 s, 1-2 s: half fixed, half jitter).
    attempts = proxy.wait_turned_away(3)
    first, second = (later.at - earlier.at for earlier, later in itertools.pairwise(attempts))
    assert 0.45 <= first <= 1.6, first
    assert 0.95 <= second <= 2.6, second
    assert all(attempt.request.startswith("GET /ws?name=Ann ") for attempt in attempts), attempts

    # The network is back: the browser says so, and the page reconnects at once instead of at its next try.
    proxy.restore()
    ann.page.evaluate("window.dispatchEvent(new Event('online'))")
    live(ann)
    expect(ann.messages).to_have_count(5)
    rejoin = ann.sent_of_type("join")[-1]  # on the one socket that came back: since and epoch are in the join
    assert (rejoin["room"], rejoin["since"]) == ("tunnel", 1), rejoin
    assert rejoin["epoch"], rejoin
    assert texts(ann) == [
        "before the tunnel",
        "missed 1",
        "missed 2",
        "missed 3",
        "written in the tunnel",
    ]
    assert ann.seqs() == [1, 2, 3, 4, 5]
    expect(bob.message("written in the tunnel")).to_have_count(1)
    expect(ann.page.locator(".outbox .pending")).to_have_count(0)
    expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)
    expect(ann.members).to_have_text(["Ann", "Bob"])


def test_a_restarted_memory_server_cannot_recover_and_says_so(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start()
    ann = open_page(page_url(server, room="phoenix", name="Ann"), "ann")
    live(ann)
    ann.say("said before the restart")
    expect(ann.messages).to_have_count(1)

    server = servers.restart(server)
    say_through_websocket(server, "phoenix", "said after the restart")
    notice = ann.page.locator("[data-notice=recovery]")
    expect(notice).to_contain_text("could not be recovered")
    live(ann)
    expect(ann.message("after the restart")).to_have_count(1)
    expect(ann.message("before the restart")).to_have_count(0)
    assert ann.seqs() == [1]
    notice.get_by_role("button", name="Dismiss").click()
    expect(notice).to_have_count(0)


def test_a_restarted_server_on_the_default_store_recovers_and_goes_on(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start(store=None)  # the command line's default: chat.db in the server's folder
    ann = open_page(page_url(server, room="phoenix", name="Ann"), "ann")
    live(ann)
    ann.say("said before the restart")
    expect(ann.messages).to_have_count(1)
    epoch = say_through_websocket(server, "phoenix", "answered before the restart")
    expect(ann.messages).to_have_count(2)

    server = servers.restart(server)  # same folder, same file
    assert say_through_websocket(server, "phoenix", "said after the restart") == epoch
    live(ann)
    expect(ann.messages).to_have_count(3)
    assert texts(ann) == ["said before the restart", "answered before the restart", "said after the restart"]
    assert ann.seqs() == [1, 2, 3]
    expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)
    rejoin = ann.sent_of_type("join")[-1]
    assert (rejoin["room"], rejoin["since"], rejoin["epoch"]) == ("phoenix", 2, epoch), rejoin

    ann.say("and the sequence goes on")
    expect(ann.messages).to_have_count(4)
    assert ann.seqs() == [1, 2, 3, 4]


def test_load_older_reaches_the_first_message_kept_across_a_restart(servers: Servers, open_page: OpenPage) -> None:
    server = servers.start(store=None, rate_per_second=0)
    say_through_websocket(server, "archive", *[f"entry {index}" for index in range(1, 181)])
    server = servers.restart(server)
    ann = open_page(page_url(server, room="archive", name="Ann"), "ann")
    live(ann)
    expect(ann.messages).to_have_count(50)
    assert ann.seqs() == list(range(131, 181))

    load_older = ann.page.get_by_role("button", name="Load older messages")
    for shown in (100, 150, 180):
        # The click event alone: a pointer's mousedown counts as the reader scrolling, and the page inserted
        # above may then fetch the next one by itself, racing the next click.
        load_older.dispatch_event("click")
        expect(ann.messages).to_have_count(shown)
    expect(ann.page.locator("#older-status")).to_have_text("This is the beginning of the room.")
    expect(load_older).to_be_hidden()
    assert ann.seqs() == list(range(1, 181))
    assert texts(ann)[0] == "entry 1"


def test_restart_on_redis_recovers_what_another_node_delivered_meanwhile(
    redis_server: RedisServer, servers: Servers, open_page: OpenPage, artifacts: Path
) -> None:
    node_a = servers.start(redis_server.url, rate_per_second=0)
    node_b = servers.start(redis_server.url, rate_per_second=0)
    ann = open_page(page_url(node_a, room="relay", name="Ann"), "ann")
    bob = open_page(page_url(node_b, room="relay", name="Bob"), "bob")
    live(ann)
    live(bob)
    expect(ann.members).to_have_text(["Ann", "Bob"])
    ann.say("Ann here, on node A")
    bob.say("Bob here, on node B")
    expect(ann.messages).to_have_count(2)

    servers.stop(node_a)
    expect(ann.status).to_have_attribute("data-status", "reconnecting")
    for index in range(1, 4):
        bob.say(f"while node A was down {index}")
    expect(bob.messages).to_have_count(5)

    servers.rerun(node_a)
    live(ann)
    expect(ann.messages).to_have_count(5)
    assert ann.seqs() == [1, 2, 3, 4, 5]
    assert texts(ann)[2:] == [f"while node A was down {index}" for index in range(1, 4)]
    expect(ann.page.locator("[data-notice=recovery]")).to_have_count(0)
    rejoin = ann.sent_of_type("join")[-1]
    assert (rejoin["room"], rejoin["since"]) == ("relay", 2), rejoin
    assert re.fullmatch(r"[A-Za-z0-9_-]+", rejoin["epoch"]), rejoin

    ann.say("back, and nothing missing")
    expect(bob.message("nothing missing")).to_have_count(1)
    expect(ann.messages).to_have_count(6)
    assert ann.seqs() == [1, 2, 3, 4, 5, 6]
    ann.page.screenshot(path=artifacts / "browser-redis-recovered.png")


def test_a_refused_join_shows_why_and_does_not_loop(
    server: ServerProcess, open_page: OpenPage, proxy_to: Callable[[ServerProcess], Proxy]
) -> None:
    proxy = proxy_to(server)
    proxy.refuse_joins()
    ann = open_page("", "ann")
    ann.page.clock.install()
    ann.page.goto(f"http://{proxy.base}/?room=closed&name=Ann")
    # The first refusal could be a server on its way up: /healthz answers, so the client tries once more soon.
    expect(ann.status).to_have_attribute("data-status", "reconnecting")
    proxy.wait_turned_away(1)
    ann.page.clock.run_for(1000)
    expect(ann.status).to_have_attribute("data-status", "refused")
    expect(ann.status).to_contain_text("refused")
    assert len(proxy.websocket_attempts()) == 2
    # Refused twice while the server answers: it stays put, however long it waits.
    ann.page.clock.run_for(10 * 60 * 1000)
    ann.page.evaluate("0")  # a round trip: the page's events so far (a WebSocket it opened) have reached us
    proxy.wait_turned_away(len(ann.socket_urls))  # and every handshake the page started has reached the proxy
    assert len(proxy.websocket_attempts()) == 2
    expect(ann.status).to_have_attribute("data-status", "refused")

    # The person can try again: now the server lets them in.
    proxy.restore()
    ann.page.get_by_role("button", name="Try again").click()
    live(ann)
