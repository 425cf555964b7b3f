"""A host app's hooks through Starlette's TestClient: each decision's allow, refuse and change paths, hooks that
raise or hang, and the events after the fact."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import chat
from chat.app import create_app
from chat.hooks import HookRunner, Hooks
from chat.metrics import Metrics
from chat.protocol import Member, Message
from chat.settings import Settings
from tests import tokens
from tests.standins import WAIT, barrier, joined, receive, receive_type, refused, samples_of, until

ROOM = "lobby"
QUICK = Settings(store="memory://", hook_timeout=0.5, presence_window=0)


class Events:
    """What the event hooks were told, with bounded waits from the test's thread (hooks run on the app's loop)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self._changed = threading.Condition()

    def record(self, *event: Any) -> None:
        with self._changed:
            self.seen.append(event)
            self._changed.notify_all()

    def wait(self, condition: Callable[[list[tuple[Any, ...]]], bool]) -> list[tuple[Any, ...]]:
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self.seen), WAIT), self.seen
            return list(self.seen)


class Users:
    """A host whose users say who they are in an ``X-User`` header (``id:name``); no header, no entry."""

    async def authenticate(self, websocket: WebSocket) -> chat.Identity | None:
        user = websocket.headers.get("x-user")
        if user is None:
            return None
        member_id, _, name = user.partition(":")
        return chat.Identity(member_id, name, user={"row": 42})


@contextmanager
def hosted(hooks: object, settings: Settings = QUICK) -> Iterator[TestClient]:
    with TestClient(create_app(settings, hooks=hooks)) as client:
        yield client


def never() -> Any:
    """A coroutine that never ends: a hook that hangs."""
    return anyio.Event().wait()


# --- authenticate ----------------------------------------------------------------------------------


def test_authenticate_names_the_member_whatever_the_address_says() -> None:
    """The identity the hook returns is the member: its id and name, on v1 and v1.1."""
    with hosted(Users()) as client:
        with joined(client, f"/ws/{ROOM}?name=mallory", {"x-user": "u-7:Ann"}) as (_, welcome):
            assert welcome["you"] == {"id": "u-7", "name": "Ann"}
        with client.websocket_connect("/ws?name=mallory", headers={"x-user": "u-8:Bob"}) as session:
            assert receive_type(session, "hello")["you"] == {"id": "u-8", "name": "Bob"}


def test_authenticate_returning_none_refuses_with_403() -> None:
    """Nobody the host knows: 403 ``forbidden``, counted as a hook refusal."""
    with hosted(Users()) as client:
        response = refused(client)
        assert response.status_code == 403
        assert response.json() == {"type": "error", "code": "forbidden", "detail": "not signed in"}
        assert samples_of(client.get("/metrics").text)['chat_refusals_total{reason="hook"}'] == 1


def test_authenticate_refusing_with_a_reason_shows_it() -> None:
    """``chat.Refuse`` in the hook: 403 with the hook's detail."""

    def banned(websocket: WebSocket) -> chat.Identity:
        raise chat.Refuse("you are banned until Monday")

    with hosted(Hooks(authenticate=banned)) as client:
        assert refused(client).json()["detail"] == "you are banned until Monday"


def test_authenticate_falls_back_to_the_token_when_token_auth_is_on() -> None:
    """Not signed in by the host, but a valid token: admitted as the token says; a bad token still gets 403."""
    with hosted(Users(), QUICK.replace(jwt_secret=tokens.SECRET)) as client:
        with joined(client, f"/ws/{ROOM}?token={tokens.token(sub='bot-1', name='Bot')}") as (_, welcome):
            assert welcome["you"] == {"id": "bot-1", "name": "Bot"}
        with joined(client, f"/ws/{ROOM}", {"x-user": "u-7:Ann"}) as (_, welcome):
            assert welcome["you"]["id"] == "u-7"
        assert refused(client, f"/ws/{ROOM}?token=nonsense").status_code == 403


@pytest.mark.parametrize(
    "returned",
    [chat.Identity("system"), chat.Identity("u-1", "\x00"), chat.Identity(""), "u-1"],
    ids=["reserved", "control", "empty", "not-an-identity"],
)
def test_authenticate_returning_an_unusable_identity_is_a_failure(
    returned: object, caplog: pytest.LogCaptureFixture
) -> None:
    """An identity no token could carry is the host's mistake: 503 ``unavailable``, logged naming the hook."""

    async def authenticate(websocket: WebSocket) -> object:
        return returned

    with hosted(Hooks(authenticate=authenticate)) as client:  # type: ignore[arg-type]
        response = refused(client)
        assert response.status_code == 503
        assert response.json()["code"] == "unavailable"
    [record] = [record for record in caplog.records if "hook_failed" in record.getMessage()]
    assert "hook=authenticate" in record.getMessage()


def test_authenticate_that_raises_answers_503_and_logs_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises: the handshake gets 503 ``unavailable``, the log one error naming the hook, with its
    traceback; the next client is served."""
    calls = 0

    def flaky(websocket: WebSocket) -> chat.Identity:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("session store down")
        return chat.Identity("u-1", "Ann")

    with hosted(Hooks(authenticate=flaky)) as client:
        response = refused(client)
        assert (response.status_code, response.json()["code"]) == (503, "unavailable")
        assert response.json()["detail"] == "authenticate failed: try again later"
        with joined(client) as (_, welcome):
            assert welcome["you"]["id"] == "u-1"
        assert samples_of(client.get("/metrics").text)['chat_hook_failures_total{hook="authenticate"}'] == 1
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "event=hook_failed hook=authenticate" in record.getMessage()
    assert record.exc_info is not None
    assert "session store down" in str(record.exc_info[1])


def test_authenticate_that_hangs_answers_503_after_hook_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that never answers is given up after ``hook_timeout``: 503, logged as too slow."""
    with hosted(Hooks(authenticate=lambda websocket: never())) as client:
        assert refused(client).status_code == 503
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "hook=authenticate" in record.getMessage()
    assert "took longer than hook_timeout (0.5 s)" in record.getMessage()


# --- can_join --------------------------------------------------------------------------------------


def only_lobby(identity: chat.Identity, room: str) -> bool:
    return room == ROOM


def test_can_join_refuses_a_v1_handshake_with_403() -> None:
    """v1: the handshake's room is decided before accept."""
    with hosted(Hooks(can_join=only_lobby)) as client:
        with joined(client):
            pass
        response = refused(client, "/ws/staff")
        assert response.status_code == 403
        assert response.json()["detail"] == "you may not join room 'staff'"


def test_can_join_refuses_one_room_of_a_v1_1_connection() -> None:
    """v1.1: a refused join gets ``forbidden`` for that room; the connection and its other rooms stay."""
    with hosted(Hooks(can_join=only_lobby)) as client, client.websocket_connect("/ws?name=ann") as session:
        receive_type(session, "hello")
        session.send_json({"type": "join", "room": "staff", "ref": 1})
        assert receive(session) == {
            "type": "error",
            "code": "forbidden",
            "detail": "you may not join room 'staff'",
            "ref": 1,
            "room": "staff",
        }
        session.send_json({"type": "join", "room": ROOM, "ref": 2})
        assert receive_type(session, "welcome")["ref"] == 2


def test_can_join_sees_a_guest_as_the_member_it_becomes() -> None:
    """Without authentication the hook gets the guest's identity: the id and name its welcome shows."""
    asked: list[chat.Identity] = []

    def record(identity: chat.Identity, room: str) -> bool:
        asked.append(identity)
        return True

    with hosted(Hooks(can_join=record)) as client, joined(client, f"/ws/{ROOM}?name=ann") as (_, welcome):
        [identity] = asked
        assert (identity.member_id, identity.name) == (welcome["you"]["id"], "ann")


def test_can_join_gets_the_hosts_user_object() -> None:
    """``Identity.user`` reaches the other hooks untouched."""
    users: list[object] = []

    class Host(Users):
        def can_join(self, identity: chat.Identity, room: str) -> bool:
            users.append(identity.user)
            return True

    with hosted(Host()) as client, joined(client, headers={"x-user": "u-1:Ann"}):
        assert users == [{"row": 42}]


def test_can_join_that_raises_answers_unavailable_for_that_join_only() -> None:
    """v1.1: ``unavailable`` for the join; the connection stays and the next join is decided again."""
    calls = 0

    def flaky(identity: chat.Identity, room: str) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError(room)
        return True

    with hosted(Hooks(can_join=flaky)) as client, client.websocket_connect("/ws") as session:
        receive_type(session, "hello")
        session.send_json({"type": "join", "room": ROOM, "ref": 1})
        error = receive_type(session, "error")
        assert (error["code"], error["room"], error["ref"]) == ("unavailable", ROOM, 1)
        session.send_json({"type": "join", "room": ROOM, "ref": 2})
        assert receive_type(session, "welcome")["ref"] == 2


def test_can_join_that_hangs_refuses_a_v1_handshake_with_503() -> None:
    with hosted(Hooks(can_join=lambda identity, room: never())) as client:
        assert refused(client).status_code == 503


# --- on_message ------------------------------------------------------------------------------------


def star(identity: chat.Identity, room: str, text: str) -> str | None:
    if "buy now" in text:
        return None
    if "http" in text:
        raise chat.Refuse("no links")
    return text.replace("heck", "h**k")


def test_on_message_changes_what_everyone_sees() -> None:
    """The hook's text is what is published, acknowledged and stored."""
    with hosted(Hooks(on_message=star)) as client, joined(client) as (ann, _), joined(client) as (bob, _):
        ann.send_json({"type": "message", "text": "what the heck", "ref": 1})
        assert receive_type(bob, "message")["text"] == "what the h**k"
        ann.send_json({"type": "history", "ref": "h"})
        history = until(ann, "history")[-1]
        assert [message["text"] for message in history["messages"]] == ["what the h**k"]


def test_on_message_refusing_answers_the_sender_alone() -> None:
    """``None``: ``forbidden`` "message refused"; ``Refuse``: its detail; nobody else sees anything, no seq used."""
    with hosted(Hooks(on_message=star)) as client, joined(client) as (ann, _), joined(client) as (bob, _):
        receive_type(ann, "join")
        ann.send_json({"type": "message", "text": "buy now", "ref": 1})
        assert receive(ann) == {"type": "error", "code": "forbidden", "detail": "message refused", "ref": 1}
        ann.send_json({"type": "message", "text": "see http://x", "ref": 2})
        assert receive(ann) == {"type": "error", "code": "forbidden", "detail": "no links", "ref": 2}
        barrier(bob)
        ann.send_json({"type": "message", "text": "hello", "ref": 3})
        assert receive_type(bob, "message")["seq"] == 1


def test_on_message_on_v1_1_names_the_room_in_the_refusal() -> None:
    with hosted(Hooks(on_message=star)) as client, client.websocket_connect("/ws") as session:
        receive_type(session, "hello")
        session.send_json({"type": "join", "room": ROOM})
        receive_type(session, "welcome")
        session.send_json({"type": "message", "room": ROOM, "text": "buy now", "ref": 1})
        error = receive_type(session, "error")
        assert (error["code"], error["room"], error["ref"]) == ("forbidden", ROOM, 1)


@pytest.mark.parametrize("returned", ["", "x" * 11, 42], ids=["empty", "too-long", "not-text"])
def test_on_message_returning_unusable_text_answers_unavailable(
    returned: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Text no member could send is the host's mistake: ``unavailable``, logged, nothing published."""
    settings = QUICK.replace(max_text=10)
    hooks = Hooks(on_message=lambda identity, room, text: returned)  # type: ignore[arg-type,return-value]
    with hosted(hooks, settings) as client, joined(client) as (ann, _):
        ann.send_json({"type": "message", "text": "hi", "ref": 1})
        assert receive(ann)["code"] == "unavailable"
        barrier(ann)
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "hook=on_message" in record.getMessage()


def test_on_message_that_raises_or_hangs_costs_that_message_only(caplog: pytest.LogCaptureFixture) -> None:
    """A failing hook: the sender gets ``unavailable`` and keeps its connection; the next message goes out."""
    calls = 0

    async def flaky(identity: chat.Identity, room: str, text: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError
        if calls == 2:
            await never()
        return text

    with hosted(Hooks(on_message=flaky)) as client, joined(client) as (ann, _), joined(client) as (bob, _):
        receive_type(ann, "join")
        for ref in (1, 2):
            ann.send_json({"type": "message", "text": "hi", "ref": ref})
            assert receive(ann) == {
                "type": "error",
                "code": "unavailable",
                "detail": "on_message failed: try again later",
                "ref": ref,
            }
        ann.send_json({"type": "message", "text": "third time", "ref": 3})
        assert receive_type(bob, "message")["text"] == "third time"
    failures = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(failures) == 2
    assert all("hook=on_message" in line for line in failures)


# --- events ----------------------------------------------------------------------------------------


class Watcher:
    def __init__(self) -> None:
        self.events = Events()

    def joined(self, member: Member, room: str) -> None:
        self.events.record("joined", member.id, room)

    async def left(self, member: Member, room: str) -> None:
        self.events.record("left", member.id, room)

    def published(self, message: Message) -> None:
        self.events.record("published", message.sender.id, message.room, message.seq, message.text)


def test_events_tell_the_host_what_happened_in_order() -> None:
    """joined on the member's first connection, published with the seq, left on its last connection."""
    watcher = Watcher()
    hooks = Hooks(
        authenticate=Users().authenticate, joined=watcher.joined, left=watcher.left, published=watcher.published
    )
    with hosted(hooks) as client:
        with joined(client, headers={"x-user": "u-1:Ann"}) as (first, _):
            with joined(client, headers={"x-user": "u-1:Ann"}):
                first.send_json({"type": "message", "text": "hi"})
                receive_type(first, "message")
            barrier(first)
            assert ("left", "u-1", ROOM) not in watcher.events.seen
        seen = watcher.events.wait(lambda seen: len(seen) == 3)
    assert seen == [("joined", "u-1", ROOM), ("published", "u-1", ROOM, 1, "hi"), ("left", "u-1", ROOM)]


def test_the_operator_apis_messages_are_published_events_too() -> None:
    watcher = Watcher()
    with hosted(watcher, QUICK.replace(api_key="key")) as client, joined(client):
        response = client.post(
            f"/api/rooms/{ROOM}/messages", json={"text": "maintenance"}, headers={"Authorization": "Bearer key"}
        )
        assert response.status_code == 200
        published = ("published", "system", ROOM, 1, "maintenance")
        watcher.events.wait(lambda seen: published in seen)


def test_a_hanging_event_hook_never_holds_up_delivery() -> None:
    """While ``published`` hangs, members keep chatting: acks and messages flow."""
    started = Events()
    release = anyio.Event()

    async def stuck(message: Message) -> None:
        started.record(message.seq)
        await release.wait()

    settings = QUICK.replace(hook_timeout=30)
    with hosted(Hooks(published=stuck), settings) as client, joined(client) as (ann, _), joined(client) as (bob, _):
        receive_type(ann, "join")
        for ref in range(1, 4):
            ann.send_json({"type": "message", "text": f"m{ref}", "ref": ref})
        assert [receive_type(bob, "message")["seq"] for _ in range(3)] == [1, 2, 3]
        started.wait(lambda seen: seen == [(1,)])
        assert client.portal is not None
        client.portal.call(release.set)
        started.wait(lambda seen: len(seen) == 3)


def test_a_failing_event_hook_is_logged_and_the_next_event_runs(caplog: pytest.LogCaptureFixture) -> None:
    watcher = Watcher()

    def joined_fails(member: Member, room: str) -> None:
        raise ValueError("index down")

    with hosted(Hooks(joined=joined_fails, left=watcher.left)) as client:
        with joined(client) as (_, welcome):
            pass
        watcher.events.wait(lambda seen: seen == [("left", welcome["you"]["id"], ROOM)])
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "hook=joined" in record.getMessage()


# --- what hooks are --------------------------------------------------------------------------------


def test_hooks_are_taken_from_any_objects_methods() -> None:
    watcher = Watcher()
    hooks = Hooks.of(watcher)
    assert hooks.published == watcher.published
    assert hooks.authenticate is None


def test_a_hook_that_is_not_callable_is_refused_at_once() -> None:
    class Wrong:
        can_join = True

    with pytest.raises(TypeError, match="can_join must be callable"):
        create_app(QUICK, hooks=Wrong())


# --- the runner ------------------------------------------------------------------------------------


def runner_with(hooks: Hooks, timeout: float = WAIT) -> HookRunner:
    return HookRunner(hooks, timeout, Metrics(Settings()))


def dropped(runner: HookRunner) -> float:
    return runner.metrics.hook_events_dropped._value.get()  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_events_past_the_backlog_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook that cannot keep up costs events, counted, never memory without bound."""
    monkeypatch.setattr("chat.hooks.EVENT_BACKLOG", 2)
    release, seen = anyio.Event(), []

    async def slow(message: Message) -> None:
        seen.append(message.seq)
        await release.wait()

    runner = runner_with(Hooks(published=slow))
    member = Member("u-1", "ann")
    for seq in range(1, 5):  # the task takes the first only once this test awaits: 2 wait, 2 are dropped
        runner.published(Message(ROOM, seq, member, "hi", 0))
    assert dropped(runner) == 2
    release.set()
    await runner.stop()
    assert seen == [1, 2]


@pytest.mark.anyio
async def test_events_after_stop_are_dropped_until_the_app_starts_again() -> None:
    seen: list[str] = []
    runner = runner_with(Hooks(joined=lambda member, room: seen.append(room)))
    runner.joined(Member("u-1", "ann"), "a")
    await runner.stop()
    runner.joined(Member("u-1", "ann"), "b")
    assert dropped(runner) == 1
    runner.restart()
    runner.joined(Member("u-1", "ann"), "c")
    await runner.stop()
    assert seen == ["a", "c"]
