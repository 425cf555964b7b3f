"""The endpoints (v1's ``ChatEndpoint``, v1.1's ``MultiRoomEndpoint``) with the app's real Chat: driven through
``chat.testing`` on both delivery paths, or, where a test needs to step in between them, their hooks called
directly with a stand-in websocket (``Client``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, cast

import anyio
import pytest
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.types import Message as ASGIMessage
from starlette.types import Scope
from starlette.websockets import WebSocket

import chat.testing as testing
from chat.app import create_app
from chat.backends import Deliver, PublishDone, Snapshot
from chat.backends.memory import MemoryBackend
from chat.chat import Chat, chat_of
from chat.connection import DIRECT_EXTENSION, Connection, DirectConnection, QueuedConnection, Subscription
from chat.endpoint import DENIAL_EXTENSION, MAX_PUBLISHING, ChatEndpoint, open_connection, query_of
from chat.exceptions import SlowConsumer, Unavailable
from chat.multiroom import MultiRoomEndpoint
from chat.protocol import Member, Message, Restart
from chat.settings import Settings
from chat.testing import ChatTest, Delivery
from tests.standins import Accepted, Closed, Gate, StandInWebSocket, StandInWriter

pytestmark = pytest.mark.anyio

ROOM = "lobby"


async def no_receive() -> ASGIMessage:
    raise AssertionError("the hooks are called directly: nothing reads the ASGI channel")


async def no_send(message: ASGIMessage) -> None:
    raise AssertionError("the hooks are called directly: nothing writes the ASGI channel")


class Client:
    """One endpoint and the stand-in websocket its hooks are given: v1's in ``room``, or v1.1's (``room=None``)."""

    def __init__(
        self,
        app: Starlette,
        room: str | None = ROOM,
        query: dict[str, str] | None = None,
        denial: bool = True,
        writer: StandInWriter | None = None,
    ) -> None:
        extensions: dict[str, Any] = {DENIAL_EXTENSION: {}} if denial else {}
        if writer is not None:
            extensions[DIRECT_EXTENSION] = {"writer": writer}
        scope: Scope = {
            "type": "websocket",
            "app": app,
            "path": "/ws" if room is None else f"/ws/{room}",
            "headers": [],
            "query_string": b"",
            "extensions": extensions,
        }
        self.endpoint = (MultiRoomEndpoint if room is None else ChatEndpoint)(scope, no_receive, no_send)
        self.ws = StandInWebSocket(scope, room or "", query)

    @property
    def socket(self) -> WebSocket:
        return cast(WebSocket, self.ws)

    async def connect(self, task_group: TaskGroup) -> None:
        self.endpoint.task_group = task_group
        await self.endpoint.on_connect(self.socket)

    async def join(self, task_group: TaskGroup) -> dict[str, Any]:
        """Connect and return the welcome frame (after the accept)."""
        await self.connect(task_group)
        assert await self.ws.recorder.next() == Accepted()
        welcome = await self.ws.recorder.next_sent()
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def send(self, data: str | bytes) -> None:
        await self.endpoint.on_receive(self.socket, data)

    async def send_json(self, **fields: Any) -> None:
        await self.send(json.dumps(fields))

    async def disconnect(self, code: int = 1000) -> None:
        await self.endpoint.on_disconnect(self.socket, code)

    async def next(self) -> dict[str, Any]:
        return await self.ws.recorder.next_sent()

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Frames up to and including the next one of type ``kind``."""
        frames = [await self.next()]
        while frames[-1]["type"] != kind:
            frames.append(await self.next())
        return frames

    async def join_room(self, room: str) -> dict[str, Any]:
        """On /ws: join a room; its welcome."""
        await self.send_json(type="join", room=room)
        return (await self.until("welcome"))[-1]

    async def ping(self, ref: str = "barrier") -> list[dict[str, Any]]:
        """Ping and return every frame received before the pong (the pong excluded)."""
        await self.send_json(type="ping", ref=ref)
        frames = await self.until("pong")
        assert frames[-1] == {"type": "pong", "ref": ref}
        return frames[:-1]

    @property
    def rooms(self) -> dict[str, Subscription]:
        """A /ws client's joined rooms."""
        assert isinstance(self.endpoint, MultiRoomEndpoint)
        return self.endpoint.rooms

    @property
    def member(self) -> Member:
        assert self.endpoint.connection is not None
        return self.endpoint.connection.member


MakeApp = Callable[..., Starlette]


@pytest.fixture
async def make_app(settings: Settings) -> AsyncIterator[MakeApp]:
    """Makes chat apps on the backend under test, with settings replaced as given; each is stopped afterwards."""
    made: list[Starlette] = []

    def make(**changes: Any) -> Starlette:
        application = create_app(settings.replace(**changes))
        made.append(application)
        return application

    yield make
    for application in made:
        await chat_of({"app": application}).stop()


@pytest.fixture
def app(make_app: MakeApp) -> Starlette:
    """The chat app on the backend under test; its backend is stopped afterwards."""
    return make_app()


@pytest.fixture
async def task_group() -> AsyncIterator[TaskGroup]:
    """The task group the endpoints' writers run in (dispatch provides it in production)."""
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


def chat(app: Starlette) -> Chat:
    return chat_of({"app": app})


@pytest.fixture(params=["direct", "queued"])
def delivery(request: pytest.FixtureRequest) -> Delivery:
    """Both ways an endpoint's frames reach its socket: the chat.direct extension, and a writer task."""
    value: Delivery = request.param
    return value


def kit_of(app: Starlette, delivery: Delivery) -> ChatTest:
    """The app run by chat.testing: members connect through the endpoints' own receive loop."""
    return ChatTest(app=app, delivery=delivery)


@pytest.fixture
async def kit(app: Starlette, delivery: Delivery) -> AsyncIterator[ChatTest]:
    """The app on the backend under test, run by chat.testing on the delivery path under test."""
    async with kit_of(app, delivery) as running:
        yield running


def connection_of(member: testing.Member) -> Connection:
    """The member's connection, as its endpoint holds it."""
    assert member.endpoint is not None
    assert member.endpoint.connection is not None
    return member.endpoint.connection


def rooms_of(member: testing.Member) -> dict[str, Subscription]:
    """A /ws member's joined rooms, as its endpoint holds them."""
    assert isinstance(member.endpoint, MultiRoomEndpoint)
    return member.endpoint.rooms


async def until(member: testing.Member, kind: str) -> list[dict[str, Any]]:
    """Frames up to and including the next one of type ``kind``."""
    frames = [await member.receive()]
    while frames[-1]["type"] != kind:
        frames.append(await member.receive())
    return frames


class FailingJoins(MemoryBackend):
    """A memory backend that cannot take joins to the rooms in ``failing``."""

    failing: frozenset[str] = frozenset()

    async def snapshot(self, room: str, since: int | None, epoch: str | None) -> Snapshot:
        if room in self.failing:
            raise Unavailable("backend unavailable")
        return await super().snapshot(room, since, epoch)


# --- the handshake's query -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "name=ann",
        "name=ann&since=3&epoch=e1",
        "a=1&a=2",
        "a",
        "a=&b",
        "&&a=1&",
        "x=1=2",
        "name=ann%20lee",
        "name=a+b",
        "name=\xe9",
        ";a=1",
    ],
)
def test_the_query_reads_as_starlettes_query_params(query: str) -> None:
    """The handshake's query gives each name its last value, unquoted, as Starlette's ``QueryParams`` reads it."""
    raw = query.encode("latin-1")
    assert query_of({"query_string": raw}) == dict(QueryParams(raw))


# --- on_connect ----------------------------------------------------------------------------------


async def test_connect_accepts_and_sends_the_welcome_first(kit: ChatTest) -> None:
    """on_connect accepts, then the welcome is the first frame, naming the member and the room."""
    async with kit.member(ROOM, name="alice") as alice:
        assert alice.accepted
        welcome = alice.frames[0]
        assert welcome["type"] == "welcome"
        assert welcome["room"] == ROOM
        assert welcome["you"]["name"] == "alice"
        assert welcome["members"] == [welcome["you"]]
        assert (welcome["seq"], welcome["recovered"], welcome["history"]) == (0, False, [])


async def test_an_open_connections_endpoint_has_no_instance_dict(kit: ChatTest) -> None:
    """Both endpoints keep every attribute in a slot (an idle connection's memory), and no rate bucket until a frame."""
    for room in (ROOM, None):
        async with kit.member(room) as member:
            assert member.endpoint is not None
            assert vars(member.endpoint) == {}
            assert member.endpoint.bucket is None


async def test_connect_registers_and_counts_the_connection(kit: ChatTest) -> None:
    """After on_connect the connection is in the registry and counted."""
    async with kit.member(ROOM) as client:
        registry = kit.chat.registry
        assert registry.rooms() == {ROOM: [connection_of(client)]}
        assert registry.connections == 1


async def test_second_member_sees_the_first_and_the_first_sees_the_join(kit: ChatTest) -> None:
    """The newcomer's welcome lists both members; the earlier member gets a join frame."""
    async with kit.member(ROOM, name="alice") as alice, kit.member(ROOM, name="bob") as bob:
        names = {member["name"] for member in bob.welcome["members"]}
        assert names == {"alice", "bob"}
        assert await alice.receive() == {"type": "join", "room": ROOM, "member": bob.you}
        assert alice.welcome["epoch"] == bob.welcome["epoch"]


async def test_invalid_join_is_denied_with_403_before_accept(kit: ChatTest) -> None:
    """An invalid room gets an HTTP 403 JSON denial; nothing is accepted, registered or counted."""
    with pytest.raises(testing.Refused) as refused:
        async with kit.member("-bad"):
            pytest.fail("the handshake was accepted")
    assert refused.value.status == 403
    body = refused.value.body
    assert (body["type"], body["code"]) == ("error", "forbidden")
    assert "room" in body["detail"]
    client = kit.members[-1]
    assert (client.accepted, client.texts, client.closed) == (False, [], None)
    assert (kit.chat.registry.rooms(), kit.chat.registry.connections) == ({}, 0)


async def test_invalid_join_without_denial_support_closes_with_1008(app: Starlette, task_group: TaskGroup) -> None:
    """Where the server cannot send an HTTP denial, the refusal is a 1008 close."""
    client = Client(app, query={"name": "   "}, denial=False)
    await client.connect(task_group)
    action = await client.ws.recorder.next()
    assert isinstance(action, Closed)
    assert action.code == 1008
    assert action.reason is not None
    assert "name" in action.reason
    assert Accepted() not in client.ws.recorder.actions


async def test_connection_over_the_cap_is_accepted_then_closed_with_1013(make_app: MakeApp, delivery: Delivery) -> None:
    """Beyond max_connections the socket is accepted and closed with 1013, never registered."""
    async with kit_of(make_app(max_connections=1), delivery) as kit, kit.member(ROOM) as first:
        with pytest.raises(testing.Refused) as refused:
            async with kit.member(ROOM):
                pytest.fail("the second member was let in")
        second = kit.members[-1]
        assert (second.accepted, second.texts, second.closed) == (True, [], testing.Closed(1013, "server full"))
        assert refused.value.status is None
        assert kit.chat.registry.connections == 1
        assert kit.chat.registry.rooms() == {ROOM: [connection_of(first)]}
        assert second.done  # its on_disconnect ran
        assert kit.chat.registry.connections == 1


async def test_join_failing_on_the_backend_closes_with_1013(delivery: Delivery) -> None:
    """When the backend is unavailable during the join, the socket is closed with 1013 and unregistered; its join
    and leave, within one presence window, are announced to nobody."""

    settings = Settings()
    backend = FailingJoins("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    async with kit_of(app, delivery) as kit, kit.member(ROOM) as bystander:
        backend.failing = frozenset({ROOM})
        with pytest.raises(testing.Refused):
            async with kit.member(ROOM):
                pytest.fail("the join succeeded")
        client = kit.members[-1]
        assert (client.accepted, client.texts) == (True, [])
        assert client.closed == testing.Closed(1013, "unavailable: backend unavailable")
        assert chat(app).registry.rooms() == {ROOM: [connection_of(bystander)]}
        chat(app).registry.announce_pending()
        await anyio.wait_all_tasks_blocked()
        assert bystander.unread() == []


def test_chat_of_refuses_an_app_without_chat() -> None:
    """The endpoint needs create_app's app.state.chat, and says so."""
    with pytest.raises(RuntimeError, match="create_app"):
        chat_of({"app": Starlette()})


# --- on_receive ----------------------------------------------------------------------------------


async def test_message_reaches_everyone_and_the_sender_gets_an_ack(kit: ChatTest) -> None:
    """A message frame is delivered to every member, sender included; the sender gets an ack with the seq."""
    async with kit.member(ROOM, name="alice") as alice, kit.member(ROOM) as bob:
        await until(alice, "join")
        await alice.send({"type": "message", "text": "hello", "ref": "r1"})
        got = {frame["type"]: frame for frame in [await alice.receive(), await alice.receive()]}
        assert got["ack"] == {"type": "ack", "ref": "r1", "seq": 1, "room": ROOM}
        assert got["message"]["text"] == "hello"
        assert got["message"]["from"] == {"id": alice.you["id"], "name": "alice"}
        assert await bob.receive() == got["message"]


async def test_plain_text_frame_is_published(kit: ChatTest) -> None:
    """A text frame that is not JSON is published as a message, without an ack."""
    async with kit.member(ROOM) as alice:
        await alice.send("just text")
        (message,) = await until(alice, "message")
        assert message["text"] == "just text"
        assert await alice.ping() == []


async def test_binary_frame_is_answered_unsupported(kit: ChatTest) -> None:
    """A binary frame gets an 'unsupported' error and the connection stays open."""
    async with kit.member(ROOM) as client:
        await client.send(b"\x00\x01")
        frame = await client.receive()
        assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unsupported", None)
        assert await client.ping() == []


async def test_bad_request_keeps_the_connection(kit: ChatTest) -> None:
    """A malformed frame gets bad_request; the connection stays registered and answering."""
    async with kit.member(ROOM) as client:
        await client.send('{"type": "message", "text": ')
        frame = await client.receive()
        assert (frame["code"], frame["ref"]) == ("bad_request", None)
        assert await client.ping() == []
        assert connection_of(client).is_open


@pytest.mark.parametrize(
    "frame",
    [pytest.param("é" * 51, id="text-of-102-bytes"), pytest.param(b"x" * 101, id="binary")],
)
async def test_frame_over_max_frame_closes_with_1009_and_leaves(
    make_app: MakeApp, delivery: Delivery, frame: str | bytes
) -> None:
    """A frame larger than max_frame bytes (text counted in UTF-8 bytes: 51 characters are 102 bytes; binary
    frames count too) closes the socket with 1009; the member leaves the room."""
    async with (
        kit_of(make_app(max_frame=100, max_text=50), delivery) as kit,
        kit.member(ROOM) as bystander,
        kit.member(ROOM) as client,
    ):
        await until(bystander, "join")
        await client.send(frame)
        assert await client.wait_closed() == testing.Closed(1009, "frame larger than 100 bytes")
        assert client.unread() == []
        leave = await until(bystander, "leave")
        assert leave[-1]["member"]["id"] == client.you["id"]
        assert kit.chat.registry.rooms() == {ROOM: [connection_of(bystander)]}


async def test_frame_of_exactly_max_frame_bytes_is_not_closed(make_app: MakeApp, delivery: Delivery) -> None:
    """A frame of exactly max_frame bytes is not closed: it is handled as usual."""
    async with kit_of(make_app(max_frame=100, max_text=50), delivery) as kit, kit.member(ROOM) as client:
        await client.send("é" * 50)  # 100 bytes: allowed, and 50 characters: fits max_text
        (message,) = await until(client, "message")
        assert message["text"] == "é" * 50


async def test_frames_after_close_are_ignored(make_app: MakeApp, task_group: TaskGroup) -> None:
    """Once the connection is closing, further frames get no answer."""
    app = make_app(max_frame=100, max_text=50)
    client = Client(app)
    await client.join(task_group)
    await client.send(b"x" * 101)
    assert isinstance(await client.ws.recorder.next(), Closed)
    await client.send_json(type="ping", ref=1)
    await client.send_json(type="message", text="late")
    await anyio.wait_all_tasks_blocked()
    assert client.ws.recorder.pending() == []
    assert await chat(app).backend.history(ROOM, None, 10) == []


async def test_receive_before_connect_is_ignored(app: Starlette) -> None:
    """A frame arriving without a connection (refused join) is ignored."""
    client = Client(app)
    await client.send_json(type="ping")
    assert client.ws.recorder.actions == []


async def test_rate_limited_frame_is_refused_and_not_published(make_app: MakeApp, delivery: Delivery) -> None:
    """Past the burst a frame gets rate_limited (echoing its ref), is not published, and the socket stays."""
    app = make_app(rate_burst=2, rate_per_second=0.001)
    async with kit_of(app, delivery) as kit, kit.member(ROOM) as client:
        await client.send({"type": "ping", "ref": 1})
        await client.send({"type": "ping", "ref": 2})
        await client.send({"type": "message", "text": "too many", "ref": 3})
        frames = [await client.receive() for _ in range(3)]
        assert frames[2] == {"type": "error", "code": "rate_limited", "detail": frames[2]["detail"], "ref": 3}
        assert await chat(app).backend.history(ROOM, None, 10) == []
        assert connection_of(client).is_open


async def test_typing_reaches_the_others_only(kit: ChatTest) -> None:
    """typing goes to every other member, not back to its sender."""
    async with kit.member(ROOM) as alice, kit.member(ROOM) as bob:
        await until(alice, "join")
        await alice.send({"type": "typing"})
        assert await bob.receive() == {"type": "typing", "room": ROOM, "from": alice.you}
        assert await alice.ping() == []


async def test_history_request_is_answered(kit: ChatTest) -> None:
    """A history frame is answered with the messages before 'before', oldest first, echoing the ref."""
    async with kit.member(ROOM) as client:
        backend = kit.chat.backend
        for index in range(5):
            await backend.publish(ROOM, Member("x", "x"), f"m{index}")
        await until(client, "message")
        await client.send({"type": "history", "before": 4, "limit": 2, "ref": "h"})
        answer = await until(client, "history")
        assert [frame["seq"] for frame in answer[-1]["messages"]] == [2, 3]
        assert (answer[-1]["room"], answer[-1]["ref"]) == (ROOM, "h")


async def test_ping_is_answered_with_pong(kit: ChatTest) -> None:
    """ping gets pong with the same ref (null without one)."""
    async with kit.member(ROOM) as client:
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong", "ref": None}


class Deferred(MemoryBackend):
    """Publishes wait until ``release``, as they wait for a round trip to Redis."""

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(url, settings)
        self.held: list[tuple[str, Member, str, asyncio.Future[Message], PublishDone | None]] = []
        self.holding = anyio.Event()
        self.hold_count = 1

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.held.append((room, sender, text, future, done))
        if len(self.held) >= self.hold_count:
            self.holding.set()
        return future

    def release(self) -> None:
        held, self.held = self.held, []
        for room, sender, text, future, done in held:
            future.set_result(self._publish(room, sender, text))
            if done is not None:
                done(future)

    def fail_one(self) -> None:
        """Fail the oldest publish held, as a Redis that went away does."""
        _, _, _, future, done = self.held.pop(0)
        future.set_exception(Unavailable("backend unavailable"))
        if done is not None:
            done(future)


def deferred_app() -> tuple[Starlette, Deferred]:
    settings = Settings(rate_per_second=0)
    backend = Deferred("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    return app, backend


async def test_messages_on_their_way_do_not_hold_up_the_next_frames(delivery: Delivery) -> None:
    """A member's next frames are answered while its messages wait for the backend; seqs keep the sending order."""
    app, backend = deferred_app()
    async with kit_of(app, delivery) as kit, kit.member(ROOM) as client:
        for index in range(3):
            await client.send({"type": "message", "text": f"m{index}", "ref": f"r{index}"})
        assert await client.ping() == []  # answered although nothing is published yet
        assert [text for _, _, text, _, _ in backend.held] == ["m0", "m1", "m2"]
        backend.release()
        frames = await until(client, "ack") + await until(client, "ack") + await until(client, "ack")
        assert [(f["seq"], f["text"]) for f in frames if f["type"] == "message"] == [(1, "m0"), (2, "m1"), (3, "m2")]
        assert [(f["ref"], f["seq"]) for f in frames if f["type"] == "ack"] == [("r0", 1), ("r1", 2), ("r2", 3)]


async def test_a_member_has_at_most_max_publishing_messages_on_their_way(task_group: TaskGroup) -> None:
    """Past MAX_PUBLISHING unanswered messages the member's next frame waits until one is answered."""
    app, backend = deferred_app()
    backend.hold_count = MAX_PUBLISHING
    client = Client(app)
    await client.join(task_group)

    async def flood() -> None:
        for index in range(MAX_PUBLISHING):
            await client.send_json(type="message", text=f"m{index}", ref=f"r{index}")
        await client.send_json(type="ping", ref="after")

    task_group.start_soon(flood)
    with anyio.fail_after(5):
        await backend.holding.wait()
    backend.release()
    frames = await client.until("pong")  # without the bound the pong would come before any ack
    assert [f["ref"] for f in frames if f["type"] == "ack"] == [f"r{index}" for index in range(MAX_PUBLISHING)]


async def test_publish_failing_later_answers_unavailable(delivery: Delivery) -> None:
    """A message the backend fails after a while gets an 'unavailable' error with its ref; the socket stays."""
    app, backend = deferred_app()
    async with kit_of(app, delivery) as kit, kit.member(ROOM) as client:
        await client.send({"type": "message", "text": "lost", "ref": "r"})
        backend.fail_one()
        frame = await client.receive()
        assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", "r")
        assert await client.ping() == []


async def test_publish_failing_on_the_backend_answers_unavailable(delivery: Delivery) -> None:
    """A message the backend cannot take gets an 'unavailable' error echoing its ref; the socket stays."""

    class Failing(MemoryBackend):
        def start_publish(
            self, room: str, sender: Member, text: str, done: PublishDone | None = None
        ) -> asyncio.Future[Message]:
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            future.set_exception(Unavailable("backend unavailable"))
            if done is not None:
                done(future)
            return future

    settings = Settings()
    app = create_app(settings)
    app.state.chat = Chat(settings, Failing("memory://", settings))
    async with kit_of(app, delivery) as kit, kit.member(ROOM) as client:
        await client.send({"type": "message", "text": "lost", "ref": "r"})
        frame = await client.receive()
        assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", "r")
        assert await client.ping() == []


# --- on_disconnect -------------------------------------------------------------------------------


async def test_disconnect_leaves_and_releases(kit: ChatTest) -> None:
    """on_disconnect unregisters the member, announces the leave and frees its place."""
    async with kit.member(ROOM) as alice, kit.member(ROOM) as bob:
        await until(alice, "join")
        leaver = bob.you
        await bob.disconnect()
        assert await alice.receive() == {"type": "leave", "room": ROOM, "member": leaver}
        registry = kit.chat.registry
        assert registry.rooms() == {ROOM: [connection_of(alice)]}
        assert registry.connections == 1
        assert Member(leaver["id"], leaver["name"]) not in await kit.chat.backend.members(ROOM)


async def test_last_disconnect_empties_the_registry(kit: ChatTest) -> None:
    """When the last member goes, the room is no longer registered and nothing is counted."""
    async with kit.member(ROOM) as client:
        await client.disconnect()
        assert (kit.chat.registry.rooms(), kit.chat.registry.connections) == ({}, 0)
        assert connection_of(client).gone


async def test_disconnect_twice_releases_once(app: Starlette, task_group: TaskGroup) -> None:
    """A repeated on_disconnect does not release the place twice."""
    alice, bob = Client(app), Client(app)
    await alice.join(task_group)
    await bob.join(task_group)
    await bob.disconnect()
    await bob.disconnect()
    assert chat(app).registry.connections == 1


async def test_disconnect_after_refusal_releases_nothing(kit: ChatTest) -> None:
    """A refused join was never counted, so its disconnect does not uncount anything."""
    async with kit.member(ROOM):
        with pytest.raises(testing.Refused):
            async with kit.member(ROOM, query={"since": "x"}):
                pytest.fail("let in")
        assert kit.members[-1].done  # its on_disconnect ran
        assert kit.chat.registry.connections == 1


async def test_server_side_close_removes_the_member_before_disconnect(app: Starlette, task_group: TaskGroup) -> None:
    """When the server closes a member, its writer takes it out of the room; the place is freed on disconnect."""
    bystander, client = Client(app), Client(app)
    await bystander.join(task_group)
    await client.join(task_group)
    await bystander.until("join")
    assert client.endpoint.connection is not None
    client.endpoint.connection.close(SlowConsumer("test"))
    assert await client.ws.recorder.next() == Closed(1013, "test")
    leave = await bystander.until("leave")
    assert leave[-1]["member"]["id"] == client.member.id
    assert chat(app).registry.rooms() == {ROOM: [bystander.endpoint.connection]}
    assert chat(app).registry.connections == 2
    await client.disconnect()
    assert chat(app).registry.connections == 1


async def test_stop_closes_every_member_with_1001(kit: ChatTest) -> None:
    """Shutting the app down (Chat.stop) closes every member with 1001 while their writers still run."""
    async with kit.member(ROOM) as alice, kit.member("other") as bob:
        await kit.chat.stop()
        assert await alice.wait_closed() == testing.Closed(1001, "server shutting down")
        assert await bob.wait_closed() == testing.Closed(1001, "server shutting down")
        await alice.disconnect()
        await bob.disconnect()
        assert (kit.chat.registry.rooms(), kit.chat.registry.connections) == ({}, 0)


def test_open_connection_configures_a_direct_writer() -> None:
    """Where the server offers direct writes, the endpoint sets the writer up and hands it the connection's stall."""
    writer = StandInWriter()
    scope = {"type": "websocket", "extensions": {DIRECT_EXTENSION: {"writer": writer}}}
    websocket = WebSocket(scope, receive=no_receive, send=no_send)
    settings = Settings(send_timeout=7.0, write_delay=0.02)
    conn = open_connection(websocket, Member("a1", "alice"), ROOM, True, settings)
    assert isinstance(conn, DirectConnection)
    assert (writer.stall_timeout, writer.batch, writer.write_delay) == (7.0, True, 0.02)
    assert writer.on_stall is not None
    conn.welcome('{"type":"welcome"}', 0)
    writer.on_stall()
    assert writer.recorder.actions[-1] == Closed(1013, "slow consumer: the socket took nothing for too long")


def test_open_connection_queues_without_direct_writes() -> None:
    """Under a server without the extension the connection is queued, for a writer task."""
    websocket = WebSocket({"type": "websocket", "extensions": {}}, receive=no_receive, send=no_send)
    conn = open_connection(websocket, Member("a1", "alice"), ROOM, False, Settings())
    assert isinstance(conn, QueuedConnection)


# --- /ws (v1.1): rooms joined and left through on_receive ------------------------------------------


async def multi(app: Starlette, task_group: TaskGroup, name: str = "ann") -> Client:
    """A /ws client, connected: its hello read."""
    client = Client(app, room=None, query={"name": name})
    await client.connect(task_group)
    assert await client.ws.recorder.next() == Accepted()
    assert await client.next() == {"type": "hello", "you": client.member.as_dict()}
    return client


def subscriptions(app: Starlette) -> dict[str, list[Connection]]:
    return chat(app).registry.rooms()


async def test_ws_says_hello_and_is_in_no_room(kit: ChatTest) -> None:
    """on_connect on /ws accepts, sends hello (the member, no room) and registers nothing."""
    async with kit.multiroom(name="ann") as client:
        assert client.welcome == {"type": "hello", "you": client.you}
        assert client.you["name"] == "ann"
        assert kit.chat.registry.rooms() == {}
        assert kit.chat.registry.connections == 1


async def test_join_answers_a_welcome_with_the_ref(kit: ChatTest) -> None:
    """A join registers the member's subscription in the room and answers v1's welcome plus the ref."""
    async with kit.multiroom() as client:
        await client.send({"type": "join", "room": "r1", "ref": "j1"})
        welcome = await client.receive()
        assert (welcome["type"], welcome["room"], welcome["ref"], welcome["you"]) == ("welcome", "r1", "j1", client.you)
        assert kit.chat.registry.rooms() == {"r1": [rooms_of(client)["r1"]]}


async def test_joins_to_many_rooms_share_one_connection(kit: ChatTest) -> None:
    """Each room joined is a subscription of the one connection; messages are routed by room."""
    async with kit.multiroom() as client, kit.multiroom(name="bob") as other:
        for room in ("r1", "r2"):
            await client.join(room)
        await other.join("r2")
        await other.send({"type": "message", "room": "r2", "text": "hi", "ref": 1})
        message = (await until(client, "message"))[-1]
        assert (message["room"], message["text"]) == ("r2", "hi")
        assert {room: len(members) for room, members in kit.chat.registry.rooms().items()} == {"r1": 1, "r2": 2}
        assert kit.chat.registry.connections == 2


async def test_message_on_ws_is_acked_with_its_room(kit: ChatTest) -> None:
    """A message to a joined room is published there; its ack names the room."""
    async with kit.multiroom() as client:
        await client.join("r1")
        await client.send({"type": "message", "room": "r1", "text": "hi", "ref": "m"})
        frames = await until(client, "ack")
        assert frames[-1] == {"type": "ack", "ref": "m", "seq": 1, "room": "r1"}


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "room": "r9", "text": "hi", "ref": "x"},
        {"type": "history", "room": "r9", "ref": "x"},
        {"type": "leave", "room": "r9", "ref": "x"},
    ],
)
async def test_a_frame_for_a_room_not_joined_is_a_bad_request(kit: ChatTest, frame: dict[str, Any]) -> None:
    """message, history and leave need a joined room: bad_request with room and ref; nothing else changes."""
    async with kit.multiroom() as client:
        await client.join("r1")
        await client.send(frame)
        error = await client.receive()
        assert (error["type"], error["code"], error["room"], error["ref"]) == ("error", "bad_request", "r9", "x")
        assert list(kit.chat.registry.rooms()) == ["r1"]
        assert await kit.chat.backend.history("r9", None, 10) == []


async def test_joining_a_room_twice_is_a_bad_request(kit: ChatTest) -> None:
    """A second join of the same room is refused; the first stays as it was."""
    async with kit.multiroom() as client:
        await client.join("r1")
        first = rooms_of(client)["r1"]
        await client.send({"type": "join", "room": "r1", "ref": 2})
        error = await client.receive()
        assert (error["code"], error["room"], error["ref"]) == ("bad_request", "r1", 2)
        assert kit.chat.registry.rooms() == {"r1": [first]}


async def test_a_join_past_max_rooms_per_connection_is_too_many_rooms(make_app: MakeApp, delivery: Delivery) -> None:
    """Past max_rooms_per_connection a join gets too_many_rooms; leaving one makes room again."""
    async with kit_of(make_app(max_rooms_per_connection=2), delivery) as kit, kit.multiroom() as client:
        for room in ("r1", "r2"):
            await client.join(room)
        await client.send({"type": "join", "room": "r3", "ref": 3})
        error = await client.receive()
        assert (error["code"], error["room"], error["ref"]) == ("too_many_rooms", "r3", 3)
        await client.send({"type": "leave", "room": "r1"})
        await until(client, "left")
        await client.send({"type": "join", "room": "r3"})
        assert (await until(client, "welcome"))[-1]["room"] == "r3"


async def test_leave_answers_left_and_the_others_see_a_leave(kit: ChatTest) -> None:
    """leave unregisters the subscription, tells the room's others, then answers left with the ref."""
    async with kit.multiroom() as client, kit.multiroom(name="bob") as other:
        for member in (client, other):
            await member.join("r1")
        await client.send({"type": "leave", "room": "r1", "ref": "l"})
        assert (await until(client, "left"))[-1] == {"type": "left", "room": "r1", "ref": "l"}
        leave = (await until(other, "leave"))[-1]
        assert (leave["room"], leave["member"]["id"]) == ("r1", client.you["id"])
        assert kit.chat.registry.rooms() == {"r1": [rooms_of(other)["r1"]]}
        await other.send({"type": "message", "room": "r1", "text": "after"})
        assert await client.ping() == []


async def test_a_join_the_backend_cannot_take_is_unavailable_for_that_room_only(delivery: Delivery) -> None:
    """A join failing on the backend answers unavailable (room, ref); the socket and other rooms stay."""

    settings = Settings()
    backend = FailingJoins("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    async with kit_of(app, delivery) as kit, kit.multiroom() as client:
        await client.join("r1")
        backend.failing = frozenset({"r2"})
        await client.send({"type": "join", "room": "r2", "ref": "j"})
        error = await client.receive()
        assert (error["code"], error["room"], error["ref"]) == ("unavailable", "r2", "j")
        assert list(rooms_of(client)) == ["r1"]
        assert list(chat(app).registry.rooms()) == ["r1"]
        backend.failing = frozenset()
        await client.send({"type": "join", "room": "r2"})
        assert (await until(client, "welcome"))[-1]["room"] == "r2"


async def test_disconnect_leaves_every_room(kit: ChatTest) -> None:
    """When the /ws socket goes, its member leaves each of its rooms and its place is given back."""
    async with kit.multiroom() as client, kit.multiroom(name="bob") as other:
        for room in ("r1", "r2"):
            for member in (client, other):
                await member.join(room)
        await client.disconnect()
        left = {(await until(other, "leave"))[-1]["room"] for _ in range(2)}
        assert left == {"r1", "r2"}
        assert {room: len(members) for room, members in kit.chat.registry.rooms().items()} == {"r1": 1, "r2": 1}
        assert kit.chat.registry.connections == 1


async def test_removal_takes_a_ws_member_out_of_that_room_only(kit: ChatTest) -> None:
    """The operator's removal gives a /ws member left (removed) for that room; its socket and other rooms stay."""
    async with kit.multiroom() as client, kit.multiroom(name="bob") as other:
        for room in ("r1", "r2"):
            await client.join(room)
        await other.join("r1")
        assert kit.chat.registry.remove_member("r1", client.you["id"]) == 1
        assert (await until(client, "left"))[-1] == {"type": "left", "room": "r1", "ref": None, "reason": "removed"}
        assert (await until(other, "leave"))[-1]["member"]["id"] == client.you["id"]
        assert list(rooms_of(client)) == ["r2"]
        assert connection_of(client).is_open
        await client.send({"type": "message", "room": "r2", "text": "still here", "ref": 1})
        assert (await until(client, "ack"))[-1]["room"] == "r2"


async def test_a_room_restart_asks_a_ws_member_to_rejoin_that_room(kit: ChatTest) -> None:
    """A room's restart gives left (restart) for it; the member joins again on the same socket."""
    async with kit.multiroom() as client:
        for room in ("r1", "r2"):
            await client.join(room)
        kit.chat.registry.deliver(Restart("r1", "new-epoch"))
        assert await client.receive() == {"type": "left", "room": "r1", "ref": None, "reason": "restart"}
        await client.send({"type": "join", "room": "r1", "since": 0, "epoch": "old"})
        assert (await until(client, "welcome"))[-1]["room"] == "r1"
        assert sorted(rooms_of(client)) == ["r1", "r2"]


async def test_ws_refuses_since_and_epoch_in_its_address(kit: ChatTest) -> None:
    """since/epoch in /ws's query are refused with a 403 JSON denial, as a bad v1 join is."""
    with pytest.raises(testing.Refused) as refused:
        async with kit.multiroom(query={"since": "3", "epoch": "e"}):
            pytest.fail("let in")
    assert refused.value.status == 403
    assert "join frame" in refused.value.detail
    assert kit.chat.registry.connections == 0


async def test_a_join_waits_for_earlier_welcomes_to_leave_the_buffer(make_app: MakeApp, task_group: TaskGroup) -> None:
    """A welcome may pass the buffer's limit, one at a time: while the socket holds more than the limit,
    a join is refused with rate_limited (room and ref), and is welcomed once the peer has read."""
    app = make_app(queue_bytes=4_000)
    for number in range(5):
        await chat(app).publish("big", Member("b1", "bob"), f"{number}" * 1_000)
    client = Client(app, room=None)
    client.ws.block = True  # the peer reads nothing for now
    await client.connect(task_group)
    await client.send_json(type="join", room="big")
    await client.send_json(type="join", room="r2", ref="j2")
    assert sorted(client.rooms) == ["big"]
    client.ws.release()
    assert await client.ws.recorder.next() == Accepted()
    frames = [await client.next() for _ in range(3)]
    assert [frame["type"] for frame in frames] == ["hello", "welcome", "error"]
    assert (frames[2]["code"], frames[2]["room"], frames[2]["ref"]) == ("rate_limited", "r2", "j2")
    await client.send_json(type="join", room="r2", ref="j2")
    assert (await client.next())["type"] == "welcome"


async def test_a_join_past_a_full_direct_socket_closes_it_as_a_slow_consumer(
    make_app: MakeApp, task_group: TaskGroup
) -> None:
    """Under direct writes a socket still holding more than the limit is a slow consumer: the next frame closes it."""
    app = make_app(queue_bytes=4_000)
    for number in range(5):
        await chat(app).publish("big", Member("b1", "bob"), f"{number}" * 1_000)
    writer = StandInWriter()
    client = Client(app, room=None, writer=writer)
    await client.connect(task_group)
    await client.send_json(type="join", room="big")
    assert writer.buffered > 4_000  # the welcome, with 5 KB of history, went out in one piece
    await client.send_json(type="join", room="r2", ref="j2")
    assert writer.recorder.closes == [Closed(1013, "slow consumer: outbound buffer full")]


async def test_joins_draw_on_the_addresss_handshake_rate(make_app: MakeApp, delivery: Delivery) -> None:
    """A join costs what a handshake costs: past the address's handshake burst it gets rate_limited."""
    app = make_app(handshake_rate_per_ip=0.001, handshake_burst_per_ip=3)
    async with kit_of(app, delivery) as kit, kit.multiroom() as client:  # the handshake took one
        for room in ("r1", "r2"):
            await client.join(room)
        await client.send({"type": "join", "room": "r3", "ref": 3})
        error = await client.receive()
        assert (error["code"], error["room"], error["ref"]) == ("rate_limited", "r3", 3)
        assert "too many joins" in error["detail"]


async def test_a_join_registered_after_the_socket_closed_is_undone(task_group: TaskGroup) -> None:
    """A join still on its way when the server closes the socket does not stay registered once it lands."""

    class SlowStart(MemoryBackend):
        gate = Gate()

        async def start(self, deliver: Deliver) -> None:
            await self.gate.pass_through()
            await super().start(deliver)

    settings = Settings()
    backend = SlowStart("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)  # no lifespan: the first join starts the backend
    client = await multi(app, task_group)
    task_group.start_soon(partial(client.send_json, type="join", room="r1"))
    await backend.gate.entered.wait()
    connection = client.endpoint.connection
    assert connection is not None
    connection.close(SlowConsumer("test"))
    await anyio.wait_all_tasks_blocked()
    backend.gate.open()
    await anyio.wait_all_tasks_blocked()
    await client.disconnect()
    assert chat(app).registry.rooms() == {}
    assert await backend.members("r1") == []


async def test_a_leave_is_answered_once_even_if_the_room_restarts_meanwhile(task_group: TaskGroup) -> None:
    """A room restarting while the member's leave waits for the registry gets no ``left`` of the server's."""

    class GatedSubscribe(MemoryBackend):
        gate: Gate | None = None

        async def subscribe(self, room: str) -> None:
            if self.gate is not None:
                await self.gate.pass_through()
            await super().subscribe(room)

    settings = Settings()
    backend = GatedSubscribe("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    client, other = await multi(app, task_group), await multi(app, task_group, "bob")
    await client.join_room("r1")
    gate = backend.gate = Gate()
    task_group.start_soon(
        partial(other.send_json, type="join", room="r2")
    )  # holds the registry's lock while subscribing
    await gate.entered.wait()
    task_group.start_soon(partial(client.send_json, type="leave", room="r1", ref="L"))
    await anyio.wait_all_tasks_blocked()  # the leave waits for the lock
    chat(app).registry.deliver(Restart("r1", "new"))
    gate.open()
    assert await client.until("left") == [{"type": "left", "room": "r1", "ref": "L"}]
    assert await client.ping() == []
