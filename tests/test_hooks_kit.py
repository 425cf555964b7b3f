"""The host's hooks (``chat.hooks``) driven through ``chat.testing``, on both delivery paths: who connects, who
joins, what is said, hooks that fail or hang, and the events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from starlette.websockets import WebSocket

from chat import Hooks, Identity, Refuse
from chat.protocol import Member as RoomMember
from chat.protocol import Message
from chat.settings import Settings
from chat.testing import Changes, ChatTest, Closed, Delivery, Refused

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["direct", "queued"])
def delivery(request: pytest.FixtureRequest) -> Delivery:
    value: Delivery = request.param
    return value


def hook_failures(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    """The log lines of the hook's failures."""
    return [record.getMessage() for record in caplog.records if f"event=hook_failed hook={hook}" in record.getMessage()]


class SessionHooks:
    """Members sign in by session; ``staff`` is for bosses; ``spam`` is refused, ``darn`` softened."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def authenticate(self, websocket: WebSocket) -> Identity | None:
        self.seen.append(
            {
                "session": dict(websocket.session),
                "cookies": dict(websocket.cookies),
                "header": websocket.headers.get("x-api-key"),
                "query": dict(websocket.query_params),
                "path": dict(websocket.path_params),
            }
        )
        user = websocket.session.get("user")
        if user == "mallory":
            raise Refuse("banned")
        return Identity(user, f"{user}!", user={"role": websocket.session.get("role")}) if user else None

    async def can_join(self, identity: Identity, room: str) -> bool:
        return room != "staff" or identity.user["role"] == "boss"

    def on_message(self, identity: Identity, room: str, text: str) -> str | None:
        if "spam" in text:
            raise Refuse("no spam here")
        if "silence" in text:
            return None
        return text.replace("darn", "d*rn")


@pytest.fixture
async def session_app(delivery: Delivery) -> AsyncIterator[tuple[ChatTest, SessionHooks]]:
    hooks = SessionHooks()
    async with ChatTest(hooks=hooks, delivery=delivery) as chat_test:
        yield chat_test, hooks


# --- authenticate ----------------------------------------------------------------------------------


async def test_authenticate_reads_the_handshake_as_a_server_gives_it(
    session_app: tuple[ChatTest, SessionHooks],
) -> None:
    """The hook gets a real WebSocket: session, cookies, headers, query and path parameters; its identity names
    the member."""
    chat_test, hooks = session_app
    async with chat_test.member(
        "lobby",
        name="ignored",
        session={"user": "ann", "role": "boss"},
        cookies={"theme": "dark"},
        headers={"X-API-Key": "k1"},
        query={"lang": "en"},
    ) as ann:
        assert ann.you == {"id": "ann", "name": "ann!"}
    assert hooks.seen == [
        {
            "session": {"user": "ann", "role": "boss"},
            "cookies": {"theme": "dark"},
            "header": "k1",
            "query": {"lang": "en", "name": "ignored"},
            "path": {"room": "lobby"},
        }
    ]


async def test_authenticate_saying_nobody_refuses_with_403(session_app: tuple[ChatTest, SessionHooks]) -> None:
    """No identity and no token auth: 403, not signed in; nobody is registered."""
    chat_test, _ = session_app
    with pytest.raises(Refused) as refused:
        async with chat_test.member("lobby", session={}):
            pytest.fail("let in")
    assert (refused.value.status, refused.value.body["code"], refused.value.detail) == (
        403,
        "forbidden",
        "not signed in",
    )
    assert chat_test.chat.registry.connections == 0


async def test_authenticate_refusing_says_why(session_app: tuple[ChatTest, SessionHooks]) -> None:
    """Refuse(detail) in authenticate: 403 with the detail, on /ws too."""
    chat_test, _ = session_app
    for room in ("lobby", None):
        with pytest.raises(Refused) as refused:
            async with chat_test.member(room, session={"user": "mallory"}):
                pytest.fail("let in")
        assert (refused.value.status, refused.value.detail) == (403, "banned")


async def test_authenticate_failing_is_503_and_logged_once(
    delivery: Delivery, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises refuses the handshake with 503 unavailable, logged once naming the hook."""

    def authenticate(websocket: WebSocket) -> Identity:
        raise KeyError("sessions store down")

    caplog.set_level(logging.ERROR, logger="chat")
    async with ChatTest(hooks=Hooks(authenticate=authenticate), delivery=delivery) as chat_test:
        with pytest.raises(Refused) as refused:
            async with chat_test.member("lobby"):
                pytest.fail("let in")
    assert (refused.value.status, refused.value.body["code"]) == (503, "unavailable")
    assert len(hook_failures(caplog, "authenticate")) == 1


# --- can_join --------------------------------------------------------------------------------------


async def test_can_join_refusing_the_handshakes_room_is_403(session_app: tuple[ChatTest, SessionHooks]) -> None:
    """v1: a room can_join refuses is a 403 naming the room; a room it allows lets the member in."""
    chat_test, _ = session_app
    with pytest.raises(Refused) as refused:
        async with chat_test.member("staff", session={"user": "ann", "role": "guest"}):
            pytest.fail("let in")
    assert (refused.value.status, refused.value.detail) == (403, "you may not join room 'staff'")
    async with chat_test.member("staff", session={"user": "bo", "role": "boss"}) as bo:
        assert bo.welcome["room"] == "staff"


async def test_can_join_refusing_a_ws_join_answers_forbidden(session_app: tuple[ChatTest, SessionHooks]) -> None:
    """v1.1: a join can_join refuses gets forbidden (room, ref); the socket stays and joins other rooms."""
    chat_test, _ = session_app
    async with chat_test.multiroom(session={"user": "ann", "role": "guest"}) as ann:
        await ann.send({"type": "join", "room": "staff", "ref": "j"})
        error = await ann.receive()
        assert (error["code"], error["room"], error["ref"]) == ("forbidden", "staff", "j")
        assert (await ann.join("lobby"))["room"] == "lobby"
        assert list(chat_test.chat.registry.rooms()) == ["lobby"]


# --- on_message ------------------------------------------------------------------------------------


async def test_on_message_changes_the_text_everyone_sees(session_app: tuple[ChatTest, SessionHooks]) -> None:
    """The text the hook returns is what is published, to the sender and the others."""
    chat_test, _ = session_app
    async with (
        chat_test.member("lobby", session={"user": "ann"}) as ann,
        chat_test.member("lobby", session={"user": "bob"}) as bob,
    ):
        await ann.send({"type": "message", "text": "darn it", "ref": 1})
        assert (await ann.receive_until("message"))["text"] == "d*rn it"
        assert (await bob.receive_until("message"))["text"] == "d*rn it"
        history = await chat_test.chat.backend.history("lobby", None, 10)
        assert [message.text for message in history] == ["d*rn it"]


async def test_on_message_refusing_answers_forbidden_with_the_detail(
    session_app: tuple[ChatTest, SessionHooks],
) -> None:
    """Refuse(detail): forbidden with the detail and the ref; None: forbidden, message refused; nothing published,
    the socket stays."""
    chat_test, _ = session_app
    async with (
        chat_test.member("lobby", session={"user": "ann"}) as ann,
        chat_test.member("lobby", session={"user": "bob"}) as bob,
    ):
        await ann.send({"type": "message", "text": "buy spam", "ref": 1})
        await ann.send({"type": "message", "text": "silence", "ref": 2})
        frames = await ann.ping()
        assert [(frame["code"], frame["detail"], frame["ref"]) for frame in frames if frame["type"] == "error"] == [
            ("forbidden", "no spam here", 1),
            ("forbidden", "message refused", 2),
        ]
        assert [frame for frame in frames if frame["type"] == "message"] == []
        assert [frame for frame in await bob.ping() if frame["type"] == "message"] == []
        assert await chat_test.chat.backend.history("lobby", None, 10) == []


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_on_message_failing_answers_unavailable_and_others_carry_on(
    delivery: Delivery, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    """A hook that raises or outlasts hook_timeout: that member gets unavailable (with its ref), the failure is
    logged once naming the hook, and the others' messages still go through."""

    async def on_message(identity: Identity, room: str, text: str) -> str:
        if identity.name != "ann":
            return text
        if failure == "raises":
            raise ValueError("moderation service down")
        await anyio.Event().wait()  # never answers
        return text

    caplog.set_level(logging.ERROR, logger="chat")
    settings = Settings(hook_timeout=0.05)
    async with (
        ChatTest(settings, Hooks(on_message=on_message), delivery=delivery) as chat_test,
        chat_test.member("lobby", name="ann") as ann,
        chat_test.member("lobby", name="bob") as bob,
    ):
        await ann.send({"type": "message", "text": "hi", "ref": 1})
        error = await ann.receive_until("error")
        assert (error["code"], error["ref"], error["detail"]) == (
            "unavailable",
            1,
            "on_message failed: try again later",
        )
        await bob.send({"type": "message", "text": "still here", "ref": 2})
        assert (await bob.receive_until("message"))["text"] == "still here"
        assert (await ann.receive_until("message"))["text"] == "still here"
        assert ann.closed is None
    (line,) = hook_failures(caplog, "on_message")
    if failure == "hangs":
        assert "took longer than hook_timeout (0.05 s)" in line
    else:
        (record,) = [record for record in caplog.records if record.getMessage() == line]
        assert record.exc_info is not None
        assert "moderation service down" in str(record.exc_info[1])


# --- events ----------------------------------------------------------------------------------------


class Recorded:
    """Event hooks that record what they are told, with bounded waits for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.messages: list[Message] = []
        self.changes = Changes()

    def joined(self, member: RoomMember, room: str) -> None:
        self.events.append(("joined", member.name, room))
        self.changes.changed()

    async def left(self, member: RoomMember, room: str) -> None:
        self.events.append(("left", member.name, room))
        self.changes.changed()

    def published(self, message: Message) -> None:
        self.messages.append(message)
        self.events.append(("published", message.sender.name, message.text))
        self.changes.changed()

    async def wait_for(self, count: int) -> None:
        await self.changes.wait_until(lambda: len(self.events) >= count)


async def test_joined_left_and_published_come_in_order(delivery: Delivery) -> None:
    """A member's first connection in a room is joined, its last left; a message is published once, with its seq."""
    recorded = Recorded()
    async with ChatTest(hooks=recorded, delivery=delivery) as chat_test:
        async with chat_test.member("lobby", name="ann") as ann:
            async with chat_test.multiroom(name="bob") as bob:
                await bob.join("lobby")
                await ann.send({"type": "message", "text": "hi", "ref": 1})
                await ann.receive_until("ack")
            await recorded.wait_for(4)
        await recorded.wait_for(5)
    assert recorded.events == [
        ("joined", "ann", "lobby"),
        ("joined", "bob", "lobby"),
        ("published", "ann", "hi"),
        ("left", "bob", "lobby"),
        ("left", "ann", "lobby"),
    ]
    assert [message.seq for message in recorded.messages] == [1]


async def test_a_failing_event_hook_does_not_stop_the_next(
    delivery: Delivery, caplog: pytest.LogCaptureFixture
) -> None:
    """An event hook that raises is logged, naming it; the next events still run."""
    seen: list[str] = []
    changes = Changes()

    def published(message: Message) -> None:
        if message.text == "boom":
            raise RuntimeError("boom")
        seen.append(message.text)
        changes.changed()

    caplog.set_level(logging.ERROR, logger="chat")
    async with (
        ChatTest(hooks=Hooks(published=published), delivery=delivery) as chat_test,
        chat_test.member("lobby") as ann,
    ):
        await ann.send({"type": "message", "text": "boom"})
        await ann.send({"type": "message", "text": "after"})
        await changes.wait_until(lambda: seen == ["after"])
    assert len(hook_failures(caplog, "published")) == 1


async def test_joined_and_left_count_members_not_connections(delivery: Delivery) -> None:
    """A member on two connections in a room is joined once, at the first, and left once, at the last."""
    recorded = Recorded()
    hooks = SessionHooks()
    both = Hooks(
        authenticate=hooks.authenticate, joined=recorded.joined, left=recorded.left, published=recorded.published
    )
    async with ChatTest(hooks=both, delivery=delivery) as chat_test:
        async with chat_test.member("lobby", session={"user": "ann"}) as first:
            async with chat_test.member("lobby", session={"user": "ann"}) as second:
                assert first.you == second.you
                await second.send({"type": "message", "text": "from the second", "ref": 1})
                await second.receive_until("ack")
            await first.send({"type": "message", "text": "from the first", "ref": 2})
            await first.receive_until("ack")
            await recorded.wait_for(3)
        await recorded.wait_for(4)
    assert recorded.events == [
        ("joined", "ann!", "lobby"),
        ("published", "ann!", "from the second"),
        ("published", "ann!", "from the first"),
        ("left", "ann!", "lobby"),
    ]


async def test_a_hanging_authenticate_is_503(delivery: Delivery, caplog: pytest.LogCaptureFixture) -> None:
    """An authenticate that does not answer within hook_timeout refuses the handshake with 503, logged once."""

    async def authenticate(websocket: WebSocket) -> Identity:
        await anyio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    caplog.set_level(logging.ERROR, logger="chat")
    async with ChatTest(Settings(hook_timeout=0.05), Hooks(authenticate=authenticate), delivery=delivery) as chat_test:
        with pytest.raises(Refused) as refused:
            async with chat_test.member("lobby"):
                pytest.fail("let in")
    assert (refused.value.status, refused.value.detail) == (503, "authenticate failed: try again later")
    (line,) = hook_failures(caplog, "authenticate")
    assert "took longer than hook_timeout" in line


@pytest.mark.parametrize("answer", ["", 42, "x" * 11])
async def test_on_message_answering_what_cannot_be_published_is_a_failure(
    delivery: Delivery, caplog: pytest.LogCaptureFixture, answer: object
) -> None:
    """An on_message answer that is not 1-max_text characters is the hook's failure: unavailable, logged once
    saying what was wrong; nothing is published."""

    def on_message(identity: Identity, room: str, text: str) -> Any:
        return answer

    caplog.set_level(logging.ERROR, logger="chat")
    settings = Settings(max_text=10)
    async with (
        ChatTest(settings, Hooks(on_message=on_message), delivery=delivery) as chat_test,
        chat_test.member("lobby") as ann,
    ):
        await ann.send({"type": "message", "text": "hi", "ref": 1})
        error = await ann.receive()
        assert (error["code"], error["ref"]) == ("unavailable", 1)
        assert await chat_test.chat.backend.history("lobby", None, 10) == []
    (line,) = hook_failures(caplog, "on_message")
    assert "it must return 1-10 characters or None" in line


async def test_an_event_outlasting_hook_timeout_does_not_hold_up_the_next(
    delivery: Delivery, caplog: pytest.LogCaptureFixture
) -> None:
    """An event hook that hangs is given up after hook_timeout, logged, and the next events run."""
    seen: list[str] = []
    changes = Changes()

    async def published(message: Message) -> None:
        if message.text == "hang":
            await anyio.Event().wait()
        seen.append(message.text)
        changes.changed()

    caplog.set_level(logging.ERROR, logger="chat")
    async with (
        ChatTest(Settings(hook_timeout=0.05), Hooks(published=published), delivery=delivery) as chat_test,
        chat_test.member("lobby") as ann,
    ):
        await ann.send({"type": "message", "text": "hang"})
        await ann.send({"type": "message", "text": "after"})
        await changes.wait_until(lambda: seen == ["after"])
    (line,) = hook_failures(caplog, "published")
    assert "took longer than hook_timeout" in line


# --- regressions ---------------------------------------------------------------------------------------------


async def test_a_hooks_own_timeout_error_is_logged_as_what_it_is(caplog: pytest.LogCaptureFixture) -> None:
    """A hook raising a TimeoutError of its own, at once, is logged with its traceback, not as a hook_timeout."""

    async def on_message(identity: Identity, room: str, text: str) -> str:
        raise TimeoutError("database query timed out")

    caplog.set_level(logging.ERROR, logger="chat")
    async with (
        ChatTest(Settings(hook_timeout=5.0), Hooks(on_message=on_message)) as chat_test,
        chat_test.member("lobby") as ann,
    ):
        await ann.send({"type": "message", "text": "hi", "ref": 1})
        assert (await ann.receive())["code"] == "unavailable"
    (line,) = hook_failures(caplog, "on_message")
    assert "took longer than hook_timeout" not in line
    (record,) = [record for record in caplog.records if record.getMessage() == line]
    assert record.exc_info is not None


async def test_stop_closes_a_ws_connection_in_no_room(delivery: Delivery) -> None:
    """Chat.stop closes every connection with 1001, a /ws connection in no room too."""
    async with ChatTest(delivery=delivery) as chat_test, chat_test.multiroom() as cy:
        await chat_test.chat.stop()
        assert await cy.wait_closed(within=0.5) == Closed(1001, "server shutting down")
