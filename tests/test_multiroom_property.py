"""A property of ``/ws`` (v1.1): whatever mix of joins, leaves, messages, typing and history one connection sends,
refused ones included, and whatever rooms the operator removes it from, the registry holds its member in exactly
the rooms it joined and is still in, and the member gets each message of those rooms exactly once, in order, and
nothing of any other room.

``MultiRoomEndpoint``'s hooks are called directly on the memory backend, writing through stand-in direct
writers: every frame a step causes is written before the hook returns, so each step is checked exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.types import Message as ASGIMessage
from starlette.types import Scope
from starlette.websockets import WebSocket

from chat.app import create_app
from chat.chat import Chat, chat_of
from chat.connection import DIRECT_EXTENSION, Subscription
from chat.multiroom import MultiRoomEndpoint
from chat.protocol import HISTORY_LIMIT_DEFAULT
from chat.settings import Settings
from tests.standins import Closed, Sent, StandInWebSocket, StandInWriter

ROOMS = ("alpha", "beta", "gamma")
STEPS = settings(max_examples=300, deadline=None)
WAIT = 5.0
"""The most one example may take (each step is a few direct calls on the memory backend)."""

Kind = Literal["join", "rejoin", "leave", "say", "typing", "history", "other_says", "other_types", "removed"]
KINDS: tuple[Kind, ...] = (
    "join",
    "rejoin",
    "leave",
    "say",
    "typing",
    "history",
    "other_says",
    "other_types",
    "removed",
)
"""What one step does: the member joins (``rejoin``: with the since and epoch it last saw there), leaves, publishes,
types or asks for history in a room; the observer publishes or types there; or the operator removes the member
from the room. Any of the member's may be refused."""
Step = tuple[Kind, str]
steps = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(ROOMS)), min_size=30, max_size=120)

Frame = dict[str, Any]


async def no_receive() -> ASGIMessage:
    raise AssertionError("the hooks are called directly: nothing reads the ASGI channel")


async def no_send(message: ASGIMessage) -> None:
    raise AssertionError("the hooks are called directly: nothing writes the ASGI channel")


class Socket:
    """One ``/ws`` connection: a ``MultiRoomEndpoint`` whose hooks the test calls, its frames on a stand-in writer."""

    def __init__(self, app: Starlette, name: str) -> None:
        self.writer = StandInWriter()
        scope: Scope = {
            "type": "websocket",
            "app": app,
            "path": "/ws",
            "headers": [],
            "query_string": b"",
            "extensions": {DIRECT_EXTENSION: {"writer": self.writer}},
        }
        self.endpoint = MultiRoomEndpoint(scope, no_receive, no_send)
        self.ws = StandInWebSocket(scope, "", {"name": name})
        self.you: Frame = {}

    @property
    def socket(self) -> WebSocket:
        return cast(WebSocket, self.ws)

    async def connect(self) -> None:
        """Open the connection and read its hello."""
        await self.endpoint.on_connect(self.socket)
        (hello,) = self.frames()
        assert hello["type"] == "hello", hello
        self.you = hello["you"]

    async def send(self, **fields: Any) -> None:
        await self.endpoint.on_receive(self.socket, json.dumps(fields))

    def frames(self) -> list[Frame]:
        """The frames written since the last call; the socket then takes them all (its buffer is empty again)."""
        actions = self.writer.recorder.pending()
        closes = [action for action in actions if isinstance(action, Closed)]
        assert not closes, f"the connection was closed: {closes}"
        self.writer.buffered = 0
        return [action.json() for action in actions if isinstance(action, Sent)]

    async def disconnect(self) -> None:
        await self.endpoint.on_disconnect(self.socket, 1000)


def summary(frame: Frame) -> tuple[Any, ...]:
    """What a step must get right of a frame (not its timestamps, epoch or welcome history: checked apart)."""
    kind = frame["type"]
    if kind == "message":
        return (kind, frame["room"], frame["seq"], frame["from"]["id"], frame["text"])
    if kind == "ack":
        return (kind, frame["room"], frame["ref"], frame["seq"])
    if kind == "error":
        return (kind, frame["code"], frame.get("room"), frame["ref"])
    if kind == "welcome":
        return (kind, frame["room"], frame["ref"], frame["seq"], frame["recovered"])
    if kind in ("join", "leave"):
        return (kind, frame["room"], frame["member"]["id"])
    if kind == "typing":
        return (kind, frame["room"], frame["from"]["id"])
    if kind == "history":
        return (kind, frame["room"], frame["ref"], tuple(message["seq"] for message in frame["messages"]))
    return exactly(frame)


def exactly(frame: Frame) -> tuple[Any, ...]:
    """The summary of a frame that must be exactly this one."""
    return ("exactly", json.dumps(frame, sort_keys=True))


Summary = tuple[Any, ...]


@dataclass
class Expected:
    """What one step must cause: the summaries of the member's frames and of the observer's, and for a join that
    is not refused, the seq the member asked to recover from (0: none)."""

    mine: list[Summary]
    theirs: list[Summary] = field(default_factory=list)
    since: int | None = None


@dataclass
class Model:
    """What the member's frames and the registry must show: the rooms it is in, each room's seq, what it saw."""

    member: str
    observer: str
    joined: set[str] = field(default_factory=set)
    seq: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROOMS, 0))
    seen: dict[str, int] = field(default_factory=dict)
    """room -> the highest seq the member holds there (from a welcome or a message)."""
    epochs: dict[str, str] = field(default_factory=dict)
    owed: dict[str, list[int]] = field(default_factory=lambda: {room: [] for room in ROOMS})
    """room -> the seqs published while the member was in it: what it must receive as messages, in order."""
    texts: int = 0

    def text(self) -> str:
        self.texts += 1
        return f"text {self.texts}"

    def published(self, room: str) -> int:
        """A message was published in ``room``: its seq (owed to the member if it is in the room)."""
        self.seq[room] += 1
        if room in self.joined:
            self.owed[room].append(self.seq[room])
            self.seen[room] = self.seq[room]
        return self.seq[room]

    def refused(self, room: str, ref: str | None) -> Expected:
        """A refused step: a ``bad_request`` naming the room for the member, nothing for anyone else."""
        return Expected([("error", "bad_request", room, ref)])


class Run:
    """One example: an app, the member's connection and an observer's that is in every room throughout."""

    def __init__(self) -> None:
        # Joins and leaves told at once (no presence window), so that each step's frames are its own.
        self.app = create_app(Settings(backend="memory://", rate_per_second=0, max_bad_frames=0, presence_window=0))
        self.chat: Chat = chat_of({"app": self.app})
        self.member = Socket(self.app, "member")
        self.observer = Socket(self.app, "observer")
        self.received: dict[str, list[int]] = {room: [] for room in ROOMS}
        """room -> the seqs of the message frames the member received there, in order."""

    async def start(self) -> Model:
        await self.member.connect()
        await self.observer.connect()
        for room in ROOMS:
            await self.observer.send(type="join", room=room, ref=room)
            (welcome,) = self.observer.frames()
            assert (welcome["type"], welcome["room"]) == ("welcome", room), welcome
        return Model(self.member.you["id"], self.observer.you["id"])

    async def step(self, model: Model, kind: Kind, room: str, index: int) -> None:
        """Do one step; check every frame both connections got from it, then the registry."""
        ref = f"{kind}-{index}"
        expected = await self.act(model, kind, room, ref)
        got = self.member.frames()
        for frame in got:
            if frame["type"] == "message":
                assert frame["room"] in model.joined, f"a message of {frame['room']}, a room the member is not in"
                self.received[frame["room"]].append(frame["seq"])
        assert Counter(map(summary, got)) == Counter(expected.mine), (kind, room, got)
        assert Counter(map(summary, self.observer.frames())) == Counter(expected.theirs), (kind, room)
        if expected.since is not None:
            self.check_welcome(model, next(frame for frame in got if frame["type"] == "welcome"), expected.since)
        await self.check_registry(model)

    async def act(self, model: Model, kind: Kind, room: str, ref: str) -> Expected:
        """Send the step's frame and update the model; what the step must cause."""
        inside = room in model.joined
        member, observer = model.member, model.observer
        if kind in ("join", "rejoin"):
            recover = kind == "rejoin" and room in model.seen
            since = model.seen.get(room, 0) if recover else 0
            fields = {"since": since, "epoch": model.epochs[room]} if recover else {}
            await self.member.send(type="join", room=room, ref=ref, **fields)
            if inside:
                return model.refused(room, ref)
            model.joined.add(room)
            model.seen[room] = model.seq[room]
            return Expected([("welcome", room, ref, model.seq[room], recover)], [("join", room, member)], since)
        if kind == "leave":
            await self.member.send(type="leave", room=room, ref=ref)
            if not inside:
                return model.refused(room, ref)
            model.joined.discard(room)
            return Expected([exactly({"type": "left", "room": room, "ref": ref})], [("leave", room, member)])
        if kind == "say":
            text = model.text()
            await self.member.send(type="message", room=room, text=text, ref=ref)
            if not inside:
                return model.refused(room, ref)
            seq = model.published(room)
            message = ("message", room, seq, member, text)
            return Expected([("ack", room, ref, seq), message], [message])
        if kind == "typing":
            await self.member.send(type="typing", room=room)
            return model.refused(room, None) if not inside else Expected([], [("typing", room, member)])
        if kind == "history":
            await self.member.send(type="history", room=room, ref=ref)
            if not inside:
                return model.refused(room, ref)
            last = model.seq[room]
            return Expected([("history", room, ref, tuple(range(max(1, last - HISTORY_LIMIT_DEFAULT + 1), last + 1)))])
        if kind == "other_says":
            text = model.text()
            await self.observer.send(type="message", room=room, text=text, ref=ref)
            seq = model.published(room)
            message = ("message", room, seq, observer, text)
            return Expected([message] if inside else [], [("ack", room, ref, seq), message])
        if kind == "other_types":
            await self.observer.send(type="typing", room=room)
            return Expected([("typing", room, observer)] if inside else [])
        await self.chat.backend.remove(room, member)  # what the operator's DELETE does
        if not inside:
            return Expected([])
        model.joined.discard(room)
        # The server takes the member out in a task of its own: the others' leave says it is over.
        leave = await self.observer.writer.recorder.next_sent()
        assert summary(leave) == ("leave", room, member), leave
        return Expected([exactly({"type": "left", "room": room, "ref": None, "reason": "removed"})])

    def check_welcome(self, model: Model, welcome: Frame, since: int) -> None:
        """A plain join's history is the room's latest messages; a rejoin's exactly those missed since ``since``."""
        room, last = welcome["room"], model.seq[welcome["room"]]
        first = since + 1 if welcome["recovered"] else max(1, last - self.chat.settings.history_on_join + 1)
        assert [message["seq"] for message in welcome["history"]] == list(range(first, last + 1))
        assert model.epochs.setdefault(room, welcome["epoch"]) == welcome["epoch"], "the room's epoch changed"
        assert [member["id"] for member in welcome["members"]].count(model.member) == 1

    async def check_registry(self, model: Model) -> None:
        """The registry, the endpoint and the room's members all hold the member in exactly ``model.joined``."""
        endpoint = self.member.endpoint
        assert set(endpoint.rooms) == model.joined
        registered = self.chat.registry.rooms()
        for room in ROOMS:
            here = registered.get(room, [])
            mine = [connection for connection in here if connection.member.id == model.member]
            if room in model.joined:
                assert mine == [endpoint.rooms[room]], (room, mine)
                assert isinstance(mine[0], Subscription)
                assert mine[0].socket is endpoint.connection
                assert mine[0].is_open
            else:
                assert mine == [], f"still registered in {room}, which it left or never joined"
            assert [connection.member.id for connection in here].count(model.observer) == 1
            members = {member.id for member in await self.chat.backend.members(room)}
            assert (model.member in members) == (room in model.joined), (room, members)

    async def stop(self) -> None:
        await self.member.disconnect()
        await self.observer.disconnect()
        await self.chat.stop()


async def run(plan: list[Step]) -> None:
    """Play the steps, checking each; then every message owed was received exactly once, in seq order."""
    example = Run()
    with anyio.fail_after(WAIT):
        model = await example.start()
        try:
            for index, (kind, room) in enumerate(plan):
                await example.step(model, kind, room, index)
            assert example.received == model.owed
        finally:
            await example.stop()
    assert example.chat.registry.rooms() == {}


@STEPS
@given(steps)
def test_the_member_is_in_exactly_the_rooms_it_joined_and_gets_exactly_their_messages(plan: list[Step]) -> None:
    """Any sequence of joins, leaves, messages, typing, history and removals on one /ws connection keeps the registry,
    the endpoint and the rooms' members consistent, and delivers each message of a joined room once, in order."""
    anyio.run(run, plan)
