"""The endpoints' hooks called directly (v1's ``ChatEndpoint``, v1.1's ``MultiRoomEndpoint``), with a stand-in
websocket and the app's real Chat."""

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
from tests.standins import Accepted, Closed, Denied, Gate, StandInWebSocket, StandInWriter

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


async def test_connect_accepts_and_sends_the_welcome_first(app: Starlette, task_group: TaskGroup) -> None:
    """on_connect accepts, then the welcome is the first frame, naming the member and the room."""
    client = Client(app, query={"name": "alice"})
    welcome = await client.join(task_group)
    assert welcome["room"] == ROOM
    assert welcome["you"]["name"] == "alice"
    assert welcome["members"] == [welcome["you"]]
    assert (welcome["seq"], welcome["recovered"], welcome["history"]) == (0, False, [])


async def test_an_open_connections_endpoint_has_no_instance_dict(app: Starlette, task_group: TaskGroup) -> None:
    """Both endpoints keep every attribute in a slot (an idle connection's memory), and no rate bucket until a frame."""
    for room in (ROOM, None):
        client = Client(app, room)
        await client.connect(task_group)
        assert vars(client.endpoint) == {}
        assert client.endpoint.bucket is None


async def test_connect_registers_and_counts_the_connection(app: Starlette, task_group: TaskGroup) -> None:
    """After on_connect the connection is in the registry and counted."""
    client = Client(app)
    await client.join(task_group)
    registry = chat(app).registry
    assert registry.rooms() == {ROOM: [client.endpoint.connection]}
    assert registry.connections == 1


async def test_second_member_sees_the_first_and_the_first_sees_the_join(app: Starlette, task_group: TaskGroup) -> None:
    """The newcomer's welcome lists both members; the earlier member gets a join frame."""
    alice, bob = Client(app, query={"name": "alice"}), Client(app, query={"name": "bob"})
    first = await alice.join(task_group)
    second = await bob.join(task_group)
    names = {member["name"] for member in second["members"]}
    assert names == {"alice", "bob"}
    assert await alice.next() == {"type": "join", "room": ROOM, "member": second["you"]}
    assert first["epoch"] == second["epoch"]


async def test_invalid_join_is_denied_with_403_before_accept(app: Starlette, task_group: TaskGroup) -> None:
    """An invalid room gets an HTTP 403 JSON denial; nothing is accepted, registered or counted."""
    client = Client(app, room="-bad")
    await client.connect(task_group)
    denial = await client.ws.recorder.next()
    assert isinstance(denial, Denied)
    assert denial.status == 403
    body = denial.json()
    assert (body["type"], body["code"]) == ("error", "forbidden")
    assert "room" in body["detail"]
    assert client.ws.recorder.pending() == []
    assert (chat(app).registry.rooms(), chat(app).registry.connections) == ({}, 0)


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


async def test_connection_over_the_cap_is_accepted_then_closed_with_1013(
    make_app: MakeApp, task_group: TaskGroup
) -> None:
    """Beyond max_connections the socket is accepted and closed with 1013, never registered."""
    app = make_app(max_connections=1)
    first, second = Client(app), Client(app)
    await first.join(task_group)
    await second.connect(task_group)
    assert second.ws.recorder.actions == [Accepted(), Closed(1013, "server full")]
    assert chat(app).registry.connections == 1
    assert chat(app).registry.rooms() == {ROOM: [first.endpoint.connection]}
    await second.disconnect()
    assert chat(app).registry.connections == 1


async def test_join_failing_on_the_backend_closes_with_1013(task_group: TaskGroup) -> None:
    """When the backend is unavailable during the join, the socket is closed with 1013 and unregistered; its join
    and leave, within one presence window, are announced to nobody."""

    settings = Settings()
    backend = FailingJoins("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    bystander, client = Client(app), Client(app)
    await bystander.join(task_group)
    backend.failing = frozenset({ROOM})
    await client.connect(task_group)
    assert await client.ws.recorder.next() == Accepted()
    assert await client.ws.recorder.next() == Closed(1013, "unavailable: backend unavailable")
    assert chat(app).registry.rooms() == {ROOM: [bystander.endpoint.connection]}
    chat(app).registry.announce_pending()
    await anyio.wait_all_tasks_blocked()
    assert bystander.ws.recorder.pending() == []


def test_chat_of_refuses_an_app_without_chat() -> None:
    """The endpoint needs create_app's app.state.chat, and says so."""
    with pytest.raises(RuntimeError, match="create_app"):
        chat_of({"app": Starlette()})


# --- on_receive ----------------------------------------------------------------------------------


async def test_message_reaches_everyone_and_the_sender_gets_an_ack(app: Starlette, task_group: TaskGroup) -> None:
    """A message frame is delivered to every member, sender included; the sender gets an ack with the seq."""
    alice, bob = Client(app, query={"name": "alice"}), Client(app)
    await alice.join(task_group)
    await bob.join(task_group)
    await alice.until("join")
    await alice.send_json(type="message", text="hello", ref="r1")
    got = {frame["type"]: frame for frame in [await alice.next(), await alice.next()]}
    assert got["ack"] == {"type": "ack", "ref": "r1", "seq": 1, "room": ROOM}
    assert got["message"]["text"] == "hello"
    assert got["message"]["from"] == {"id": alice.member.id, "name": "alice"}
    assert await bob.next() == got["message"]


async def test_plain_text_frame_is_published(app: Starlette, task_group: TaskGroup) -> None:
    """A text frame that is not JSON is published as a message, without an ack."""
    alice = Client(app)
    await alice.join(task_group)
    await alice.send("just text")
    (message,) = await alice.until("message")
    assert message["text"] == "just text"
    assert await alice.ping() == []


async def test_binary_frame_is_answered_unsupported(app: Starlette, task_group: TaskGroup) -> None:
    """A binary frame gets an 'unsupported' error and the connection stays open."""
    client = Client(app)
    await client.join(task_group)
    await client.send(b"\x00\x01")
    frame = await client.next()
    assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unsupported", None)
    assert await client.ping() == []


async def test_bad_request_keeps_the_connection(app: Starlette, task_group: TaskGroup) -> None:
    """A malformed frame gets bad_request; the connection stays registered and answering."""
    client = Client(app)
    await client.join(task_group)
    await client.send('{"type": "message", "text": ')
    frame = await client.next()
    assert (frame["code"], frame["ref"]) == ("bad_request", None)
    assert await client.ping() == []
    assert client.endpoint.connection is not None
    assert client.endpoint.connection.is_open


@pytest.mark.parametrize(
    "frame",
    [pytest.param("é" * 51, id="text-of-102-bytes"), pytest.param(b"x" * 101, id="binary")],
)
async def test_frame_over_max_frame_closes_with_1009_and_leaves(
    make_app: MakeApp, task_group: TaskGroup, frame: str | bytes
) -> None:
    """A frame larger than max_frame bytes (text counted in UTF-8 bytes: 51 characters are 102 bytes; binary
    frames count too) closes the socket with 1009; the member leaves the room."""
    app = make_app(max_frame=100, max_text=50)
    bystander, client = Client(app), Client(app)
    await bystander.join(task_group)
    await client.join(task_group)
    await bystander.until("join")
    await client.send(frame)
    assert await client.ws.recorder.next() == Closed(1009, "frame larger than 100 bytes")
    leave = await bystander.until("leave")
    assert leave[-1]["member"]["id"] == client.member.id
    assert chat(app).registry.rooms() == {ROOM: [bystander.endpoint.connection]}


async def test_frame_of_exactly_max_frame_bytes_is_not_closed(make_app: MakeApp, task_group: TaskGroup) -> None:
    """A frame of exactly max_frame bytes is not closed: it is handled as usual."""
    app = make_app(max_frame=100, max_text=50)
    client = Client(app)
    await client.join(task_group)
    await client.send("é" * 50)  # 100 bytes: allowed, and 50 characters: fits max_text
    (message,) = await client.until("message")
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


async def test_rate_limited_frame_is_refused_and_not_published(make_app: MakeApp, task_group: TaskGroup) -> None:
    """Past the burst a frame gets rate_limited (echoing its ref), is not published, and the socket stays."""
    app = make_app(rate_burst=2, rate_per_second=0.001)
    client = Client(app)
    await client.join(task_group)
    await client.send_json(type="ping", ref=1)
    await client.send_json(type="ping", ref=2)
    await client.send_json(type="message", text="too many", ref=3)
    frames = [await client.next() for _ in range(3)]
    assert frames[2] == {"type": "error", "code": "rate_limited", "detail": frames[2]["detail"], "ref": 3}
    assert await chat(app).backend.history(ROOM, None, 10) == []
    assert client.endpoint.connection is not None
    assert client.endpoint.connection.is_open


async def test_typing_reaches_the_others_only(app: Starlette, task_group: TaskGroup) -> None:
    """typing goes to every other member, not back to its sender."""
    alice, bob = Client(app), Client(app)
    await alice.join(task_group)
    await bob.join(task_group)
    await alice.until("join")
    await alice.send_json(type="typing")
    assert await bob.next() == {"type": "typing", "room": ROOM, "from": alice.member.as_dict()}
    assert await alice.ping() == []


async def test_history_request_is_answered(app: Starlette, task_group: TaskGroup) -> None:
    """A history frame is answered with the messages before 'before', oldest first, echoing the ref."""
    client = Client(app)
    await client.join(task_group)
    backend = chat(app).backend
    for index in range(5):
        await backend.publish(ROOM, Member("x", "x"), f"m{index}")
    await client.until("message")
    await client.send_json(type="history", before=4, limit=2, ref="h")
    answer = await client.until("history")
    assert [frame["seq"] for frame in answer[-1]["messages"]] == [2, 3]
    assert (answer[-1]["room"], answer[-1]["ref"]) == (ROOM, "h")


async def test_ping_is_answered_with_pong(app: Starlette, task_group: TaskGroup) -> None:
    """ping gets pong with the same ref (null without one)."""
    client = Client(app)
    await client.join(task_group)
    await client.send_json(type="ping")
    assert await client.next() == {"type": "pong", "ref": None}


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


async def test_messages_on_their_way_do_not_hold_up_the_next_frames(task_group: TaskGroup) -> None:
    """A member's next frames are answered while its messages wait for the backend; seqs keep the sending order."""
    app, backend = deferred_app()
    client = Client(app)
    await client.join(task_group)
    for index in range(3):
        await client.send_json(type="message", text=f"m{index}", ref=f"r{index}")
    assert await client.ping() == []  # answered although nothing is published yet
    assert [text for _, _, text, _, _ in backend.held] == ["m0", "m1", "m2"]
    backend.release()
    frames = await client.until("ack") + await client.until("ack") + await client.until("ack")
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


async def test_publish_failing_later_answers_unavailable(task_group: TaskGroup) -> None:
    """A message the backend fails after a while gets an 'unavailable' error with its ref; the socket stays."""
    app, backend = deferred_app()
    client = Client(app)
    await client.join(task_group)
    await client.send_json(type="message", text="lost", ref="r")
    backend.fail_one()
    frame = await client.next()
    assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", "r")
    assert await client.ping() == []


async def test_publish_failing_on_the_backend_answers_unavailable(task_group: TaskGroup) -> None:
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
    client = Client(app)
    await client.join(task_group)
    await client.send_json(type="message", text="lost", ref="r")
    frame = await client.next()
    assert (frame["type"], frame["code"], frame["ref"]) == ("error", "unavailable", "r")
    assert await client.ping() == []


# --- on_disconnect -------------------------------------------------------------------------------


async def test_disconnect_leaves_and_releases(app: Starlette, task_group: TaskGroup) -> None:
    """on_disconnect unregisters the member, announces the leave and frees its place."""
    alice, bob = Client(app), Client(app)
    await alice.join(task_group)
    await bob.join(task_group)
    await alice.until("join")
    leaver = bob.member
    await bob.disconnect()
    assert await alice.next() == {"type": "leave", "room": ROOM, "member": leaver.as_dict()}
    registry = chat(app).registry
    assert registry.rooms() == {ROOM: [alice.endpoint.connection]}
    assert registry.connections == 1
    assert leaver not in await chat(app).backend.members(ROOM)


async def test_last_disconnect_empties_the_registry(app: Starlette, task_group: TaskGroup) -> None:
    """When the last member goes, the room is no longer registered and nothing is counted."""
    client = Client(app)
    await client.join(task_group)
    await client.disconnect()
    assert (chat(app).registry.rooms(), chat(app).registry.connections) == ({}, 0)
    assert client.endpoint.connection is not None
    assert client.endpoint.connection.gone


async def test_disconnect_twice_releases_once(app: Starlette, task_group: TaskGroup) -> None:
    """A repeated on_disconnect does not release the place twice."""
    alice, bob = Client(app), Client(app)
    await alice.join(task_group)
    await bob.join(task_group)
    await bob.disconnect()
    await bob.disconnect()
    assert chat(app).registry.connections == 1


async def test_disconnect_after_refusal_releases_nothing(app: Starlette, task_group: TaskGroup) -> None:
    """A refused join was never counted, so its disconnect does not uncount anything."""
    member = Client(app)
    await member.join(task_group)
    refused = Client(app, query={"since": "x"})
    await refused.connect(task_group)
    await refused.disconnect()
    assert chat(app).registry.connections == 1


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


async def test_stop_closes_every_member_with_1001(settings: Settings, task_group: TaskGroup) -> None:
    """Shutting the app down (Chat.stop) closes every member with 1001 while their writers still run."""
    app = create_app(settings)
    alice, bob = Client(app), Client(app, room="other")
    await alice.join(task_group)
    await bob.join(task_group)
    await chat(app).stop()
    assert await alice.ws.recorder.next() == Closed(1001, "server shutting down")
    assert await bob.ws.recorder.next() == Closed(1001, "server shutting down")
    await alice.disconnect()
    await bob.disconnect()
    assert (chat(app).registry.rooms(), chat(app).registry.connections) == ({}, 0)


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


async def test_ws_says_hello_and_is_in_no_room(app: Starlette, task_group: TaskGroup) -> None:
    """on_connect on /ws accepts, sends hello (the member, no room) and registers nothing."""
    client = await multi(app, task_group)
    assert client.member.name == "ann"
    assert subscriptions(app) == {}
    assert chat(app).registry.connections == 1


async def test_join_answers_a_welcome_with_the_ref(app: Starlette, task_group: TaskGroup) -> None:
    """A join registers the member's subscription in the room and answers v1's welcome plus the ref."""
    client = await multi(app, task_group)
    await client.send_json(type="join", room="r1", ref="j1")
    welcome = await client.next()
    assert (welcome["type"], welcome["room"], welcome["ref"], welcome["you"]) == (
        "welcome",
        "r1",
        "j1",
        client.member.as_dict(),
    )
    assert subscriptions(app) == {"r1": [client.rooms["r1"]]}


async def test_joins_to_many_rooms_share_one_connection(app: Starlette, task_group: TaskGroup) -> None:
    """Each room joined is a subscription of the one connection; messages are routed by room."""
    client, other = await multi(app, task_group), await multi(app, task_group, "bob")
    for room in ("r1", "r2"):
        await client.join_room(room)
    await other.join_room("r2")
    await other.send_json(type="message", room="r2", text="hi", ref=1)
    message = (await client.until("message"))[-1]
    assert (message["room"], message["text"]) == ("r2", "hi")
    assert {room: len(members) for room, members in subscriptions(app).items()} == {"r1": 1, "r2": 2}
    assert chat(app).registry.connections == 2


async def test_message_on_ws_is_acked_with_its_room(app: Starlette, task_group: TaskGroup) -> None:
    """A message to a joined room is published there; its ack names the room."""
    client = await multi(app, task_group)
    await client.join_room("r1")
    await client.send_json(type="message", room="r1", text="hi", ref="m")
    frames = await client.until("ack")
    assert frames[-1] == {"type": "ack", "ref": "m", "seq": 1, "room": "r1"}


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "room": "r9", "text": "hi", "ref": "x"},
        {"type": "history", "room": "r9", "ref": "x"},
        {"type": "leave", "room": "r9", "ref": "x"},
    ],
)
async def test_a_frame_for_a_room_not_joined_is_a_bad_request(
    app: Starlette, task_group: TaskGroup, frame: dict[str, Any]
) -> None:
    """message, history and leave need a joined room: bad_request with room and ref; nothing else changes."""
    client = await multi(app, task_group)
    await client.join_room("r1")
    await client.send_json(**frame)
    error = await client.next()
    assert (error["type"], error["code"], error["room"], error["ref"]) == ("error", "bad_request", "r9", "x")
    assert list(subscriptions(app)) == ["r1"]
    assert await chat(app).backend.history("r9", None, 10) == []


async def test_joining_a_room_twice_is_a_bad_request(app: Starlette, task_group: TaskGroup) -> None:
    """A second join of the same room is refused; the first stays as it was."""
    client = await multi(app, task_group)
    await client.join_room("r1")
    first = client.rooms["r1"]
    await client.send_json(type="join", room="r1", ref=2)
    error = await client.next()
    assert (error["code"], error["room"], error["ref"]) == ("bad_request", "r1", 2)
    assert subscriptions(app) == {"r1": [first]}


async def test_a_join_past_max_rooms_per_connection_is_too_many_rooms(make_app: MakeApp, task_group: TaskGroup) -> None:
    """Past max_rooms_per_connection a join gets too_many_rooms; leaving one makes room again."""
    app = make_app(max_rooms_per_connection=2)
    client = await multi(app, task_group)
    for room in ("r1", "r2"):
        await client.join_room(room)
    await client.send_json(type="join", room="r3", ref=3)
    error = await client.next()
    assert (error["code"], error["room"], error["ref"]) == ("too_many_rooms", "r3", 3)
    await client.send_json(type="leave", room="r1")
    await client.until("left")
    await client.send_json(type="join", room="r3")
    assert (await client.until("welcome"))[-1]["room"] == "r3"


async def test_leave_answers_left_and_the_others_see_a_leave(app: Starlette, task_group: TaskGroup) -> None:
    """leave unregisters the subscription, tells the room's others, then answers left with the ref."""
    client, other = await multi(app, task_group), await multi(app, task_group, "bob")
    for member in (client, other):
        await member.join_room("r1")
    await client.send_json(type="leave", room="r1", ref="l")
    assert (await client.until("left"))[-1] == {"type": "left", "room": "r1", "ref": "l"}
    leave = (await other.until("leave"))[-1]
    assert (leave["room"], leave["member"]["id"]) == ("r1", client.member.id)
    assert subscriptions(app) == {"r1": [other.rooms["r1"]]}
    await other.send_json(type="message", room="r1", text="after")
    assert await client.ping() == []


async def test_a_join_the_backend_cannot_take_is_unavailable_for_that_room_only(task_group: TaskGroup) -> None:
    """A join failing on the backend answers unavailable (room, ref); the socket and other rooms stay."""

    settings = Settings()
    backend = FailingJoins("memory://", settings)
    app = create_app(settings)
    app.state.chat = Chat(settings, backend)
    client = await multi(app, task_group)
    await client.join_room("r1")
    backend.failing = frozenset({"r2"})
    await client.send_json(type="join", room="r2", ref="j")
    error = await client.next()
    assert (error["code"], error["room"], error["ref"]) == ("unavailable", "r2", "j")
    assert list(client.rooms) == ["r1"]
    assert list(subscriptions(app)) == ["r1"]
    backend.failing = frozenset()
    await client.send_json(type="join", room="r2")
    assert (await client.until("welcome"))[-1]["room"] == "r2"


async def test_disconnect_leaves_every_room(app: Starlette, task_group: TaskGroup) -> None:
    """When the /ws socket goes, its member leaves each of its rooms and its place is given back."""
    client, other = await multi(app, task_group), await multi(app, task_group, "bob")
    for room in ("r1", "r2"):
        for member in (client, other):
            await member.join_room(room)
    await client.disconnect()
    left = {(await other.until("leave"))[-1]["room"] for _ in range(2)}
    assert left == {"r1", "r2"}
    assert {room: len(members) for room, members in subscriptions(app).items()} == {"r1": 1, "r2": 1}
    assert chat(app).registry.connections == 1


async def test_removal_takes_a_ws_member_out_of_that_room_only(app: Starlette, task_group: TaskGroup) -> None:
    """The operator's removal gives a /ws member left (removed) for that room; its socket and other rooms stay."""
    client, other = await multi(app, task_group), await multi(app, task_group, "bob")
    for room in ("r1", "r2"):
        await client.join_room(room)
    await other.join_room("r1")
    assert chat(app).registry.remove_member("r1", client.member.id) == 1
    assert (await client.until("left"))[-1] == {"type": "left", "room": "r1", "ref": None, "reason": "removed"}
    assert (await other.until("leave"))[-1]["member"]["id"] == client.member.id
    assert list(client.rooms) == ["r2"]
    assert client.endpoint.connection is not None
    assert client.endpoint.connection.is_open
    await client.send_json(type="message", room="r2", text="still here", ref=1)
    assert (await client.until("ack"))[-1]["room"] == "r2"


async def test_a_room_restart_asks_a_ws_member_to_rejoin_that_room(app: Starlette, task_group: TaskGroup) -> None:
    """A room's restart gives left (restart) for it; the member joins again on the same socket."""
    client = await multi(app, task_group)
    for room in ("r1", "r2"):
        await client.join_room(room)
    chat(app).registry.deliver(Restart("r1", "new-epoch"))
    assert await client.next() == {"type": "left", "room": "r1", "ref": None, "reason": "restart"}
    await client.send_json(type="join", room="r1", since=0, epoch="old")
    assert (await client.until("welcome"))[-1]["room"] == "r1"
    assert sorted(client.rooms) == ["r1", "r2"]


async def test_ws_refuses_since_and_epoch_in_its_address(app: Starlette) -> None:
    """since/epoch in /ws's query are refused with a 403 JSON denial, as a bad v1 join is."""
    client = Client(app, room=None, query={"since": "3", "epoch": "e"})
    await client.endpoint.on_connect(client.socket)
    denied = await client.ws.recorder.next()
    assert isinstance(denied, Denied)
    assert denied.status == 403
    assert "join frame" in json.loads(denied.body)["detail"]
    assert chat(app).registry.connections == 0


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


async def test_joins_draw_on_the_addresss_handshake_rate(make_app: MakeApp, task_group: TaskGroup) -> None:
    """A join costs what a handshake costs: past the address's handshake burst it gets rate_limited."""
    app = make_app(handshake_rate_per_ip=0.001, handshake_burst_per_ip=3)
    client = await multi(app, task_group)  # the handshake took one
    for room in ("r1", "r2"):
        await client.join_room(room)
    await client.send_json(type="join", room="r3", ref=3)
    error = await client.next()
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
