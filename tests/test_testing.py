"""``chat.testing``: members in memory on both delivery paths, refusals, closes, a clean stop, and the README's
examples run as written."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat.app import create_app
from chat.settings import Settings
from chat.testing import ChatTest, Closed, Delivery, NothingReceived, Refused, room_member

pytestmark = pytest.mark.anyio

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(params=["direct", "queued"])
def delivery(request: pytest.FixtureRequest) -> Delivery:
    """Both ways frames reach a socket: the chat.direct extension, and a writer task."""
    value: Delivery = request.param
    return value


@pytest.fixture
async def chat_test(delivery: Delivery) -> AsyncIterator[ChatTest]:
    """A default app on the memory backend, on the delivery path under test."""
    async with ChatTest(delivery=delivery) as running:
        yield running


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_a_member_is_welcomed(chat_test: ChatTest) -> None:
    """member() connects to /ws/{room}; the welcome, read already, names the member and the room."""
    async with chat_test.member("lobby", name="ann") as ann:
        assert ann.welcome["type"] == "welcome"
        assert (ann.welcome["room"], ann.you["name"]) == ("lobby", "ann")
        assert ann.welcome["members"] == [ann.you]
        assert chat_test.chat.registry.connections == 1
        assert await ann.ping() == []


async def test_the_delivery_path_is_the_one_asked_for(chat_test: ChatTest) -> None:
    """direct: the endpoint writes through the kit's writer; queued: no writer, frames come by the writer task."""
    async with chat_test.member("lobby") as ann:
        assert (ann.writer is not None) == (chat_test.delivery == "direct")
        assert ann.endpoint is not None
        connection = ann.endpoint.connection
        assert type(connection).__name__ == ("DirectConnection" if ann.writer else "QueuedConnection")


async def test_two_members_see_each_others_messages_and_acks(chat_test: ChatTest) -> None:
    """Each member's message reaches both; each sender alone gets the ack with the seq."""
    async with chat_test.member("lobby", name="ann") as ann, chat_test.member("lobby", name="bob") as bob:
        await ann.send({"type": "message", "text": "hi bob", "ref": "a1"})
        await bob.send({"type": "message", "text": "hi ann", "ref": "b1"})
        ann_got = await ann.ping()
        bob_got = await bob.ping()
        texts = [(frame["from"]["name"], frame["text"]) for frame in ann_got if frame["type"] == "message"]
        assert texts == [("ann", "hi bob"), ("bob", "hi ann")]
        assert [frame["text"] for frame in bob_got if frame["type"] == "message"] == ["hi bob", "hi ann"]
        assert [frame for frame in ann_got if frame["type"] == "ack"] == [
            {"type": "ack", "ref": "a1", "seq": 1, "room": "lobby"}
        ]
        assert [frame for frame in bob_got if frame["type"] == "ack"] == [
            {"type": "ack", "ref": "b1", "seq": 2, "room": "lobby"}
        ]


async def test_presence_joins_and_leaves(chat_test: ChatTest) -> None:
    """A member sees the next one join and, once it disconnects, leave."""
    async with chat_test.member("lobby", name="ann") as ann:
        async with chat_test.member("lobby", name="bob") as bob:
            assert {member["name"] for member in bob.welcome["members"]} == {"ann", "bob"}
            assert (await ann.receive_until("join"))["member"] == bob.you
        assert (await ann.receive_until("leave"))["member"] == bob.you
        assert bob.done


async def test_history_in_the_welcome_and_on_request(chat_test: ChatTest) -> None:
    """A latecomer's welcome holds the room's messages; a history frame pages them."""
    async with chat_test.member("lobby", name="ann") as ann:
        for number in range(3):
            await ann.send({"type": "message", "text": f"m{number}"})
    async with chat_test.member("lobby", name="bob") as bob:
        assert [message["text"] for message in bob.welcome["history"]] == ["m0", "m1", "m2"]
        await bob.send({"type": "history", "before": 3, "limit": 1, "ref": "h"})
        page = await bob.receive_until("history")
        assert ([message["seq"] for message in page["messages"]], page["ref"]) == ([2], "h")


async def test_a_refused_handshake_raises_refused_with_status_and_body(chat_test: ChatTest) -> None:
    """A bad room is refused with HTTP 403 and its JSON body; nothing is registered."""
    with pytest.raises(Refused) as refused:
        async with chat_test.member("-bad"):
            pytest.fail("the handshake was accepted")
    assert refused.value.status == 403
    assert (refused.value.body["code"], refused.value.code) == ("forbidden", None)
    assert "invalid room" in refused.value.detail
    assert chat_test.chat.registry.connections == 0


async def test_a_handshake_refused_by_a_close_raises_refused_with_the_code(delivery: Delivery) -> None:
    """A full server accepts and closes with 1013: Refused carries the close code, no HTTP status."""
    async with ChatTest(Settings(max_connections=1), delivery=delivery) as chat_test, chat_test.member("lobby"):
        with pytest.raises(Refused) as refused:
            async with chat_test.member("lobby"):
                pytest.fail("the second member was let in")
    assert (refused.value.status, refused.value.code, refused.value.reason) == (None, 1013, "server full")


async def test_a_frame_too_large_closes_the_socket_with_1009(delivery: Delivery) -> None:
    """The server's close shows in ``closed``; receive() then raises WebSocketDisconnect; the others see a leave."""
    settings = Settings(max_frame=100, max_text=50)
    async with (
        ChatTest(settings, delivery=delivery) as chat_test,
        chat_test.member("lobby", name="ann") as ann,
        chat_test.member("lobby", name="bob") as bob,
    ):
        await ann.receive_until("join")
        await bob.send("x" * 101)
        assert await bob.wait_closed() == Closed(1009, "frame larger than 100 bytes")
        with pytest.raises(WebSocketDisconnect) as close:
            await bob.receive()
        assert close.value.code == 1009
        assert (await ann.receive_until("leave"))["member"] == bob.you
        with pytest.raises(WebSocketDisconnect):
            await bob.send({"type": "ping"})


async def test_a_client_disconnect_runs_on_disconnect(chat_test: ChatTest) -> None:
    """disconnect() returns once the endpoint is done: the member is out of the registry."""
    async with chat_test.member("lobby") as ann:
        await ann.disconnect(1001)
        assert ann.done
        assert chat_test.chat.registry.connections == 0
        assert chat_test.chat.registry.rooms() == {}


async def test_nothing_received_names_the_frames_that_came(chat_test: ChatTest) -> None:
    """A frame that does not come fails within the time given, listing the frames received."""
    async with chat_test.member("lobby", name="ann") as ann:
        with anyio.fail_after(5), pytest.raises(NothingReceived, match='"type": "welcome"'):
            await ann.receive(within=0.05)


async def test_multiroom_members_join_rooms_by_frames(chat_test: ChatTest) -> None:
    """multiroom() connects to /ws: hello first; join() answers the room's welcome; messages name the room."""
    async with chat_test.multiroom(name="cy") as cy, chat_test.member("r1", name="dee") as dee:
        assert cy.welcome == {"type": "hello", "you": cy.you}
        welcome = await cy.join("r1", ref="j")
        assert (welcome["ref"], {member["name"] for member in welcome["members"]}) == ("j", {"cy", "dee"})
        await dee.send({"type": "message", "text": "hi"})
        message = await cy.receive_until("message")
        assert (message["room"], message["text"]) == ("r1", "hi")


async def test_a_refused_join_on_ws_raises(chat_test: ChatTest) -> None:
    """join() raises when the server answers the join with an error."""
    async with chat_test.multiroom() as cy:
        with pytest.raises(AssertionError, match="forbidden"):
            await cy.join("-bad")


async def test_batched_frames_are_received_one_by_one(chat_test: ChatTest) -> None:
    """A batch=1 member's messages may hold several frames: receive() gives them one at a time."""
    async with chat_test.member("lobby", query={"batch": "1"}) as ann:
        for number in range(3):
            await ann.send({"type": "message", "text": f"m{number}", "ref": number})
        frames = await ann.ping()
        assert [frame["text"] for frame in frames if frame["type"] == "message"] == ["m0", "m1", "m2"]
        assert sum(text.count("\n") + 1 for text in ann.texts) == len(ann.frames)


async def test_the_exit_disconnects_everyone_and_leaves_no_task(delivery: Delivery) -> None:
    """Members still connected at the exit are disconnected; the app stops; no task is left."""
    before = other_tasks()
    async with ChatTest(delivery=delivery) as chat_test:
        kept = chat_test.connect("lobby", name="ann")  # never disconnected by the test
        async with chat_test.member("lobby", name="bob") as bob:
            await bob.send({"type": "message", "text": "hi"})
        multi = chat_test.connect(None)
        registry = chat_test.chat.registry
    assert kept.done
    assert multi.done
    assert (registry.connections, registry.rooms()) == (0, {})
    assert other_tasks() == before


async def test_the_exit_stops_a_chat_mounted_in_a_host_app(delivery: Delivery) -> None:
    """app= and prefix= run a host app with the chat mounted in it; its chat is found and stopped too."""
    before = other_tasks()
    events: list[str] = []

    class Hooks:
        def published(self, message: Any) -> None:
            events.append(message.text)

    host = Starlette(routes=[Mount("/chat", app=create_app(Settings(), Hooks()))])
    async with ChatTest(app=host, prefix="/chat", delivery=delivery) as chat_test, chat_test.member("lobby") as ann:
        assert ann.endpoint is None  # the host's app routes it
        await ann.send({"type": "message", "text": "hi", "ref": 1})
        await ann.receive_until("ack")
    assert events == ["hi"]
    assert other_tasks() == before


async def test_room_member_is_one_member_of_a_fresh_app(delivery: Delivery) -> None:
    """room_member() is ChatTest plus one member, with the settings given."""
    async with room_member("lobby", name="ann", settings=Settings(max_text=5), delivery=delivery) as ann:
        assert ann.you["name"] == "ann"
        await ann.send({"type": "message", "text": "hi"})
        assert (await ann.receive_until("message"))["text"] == "hi"
        await ann.send({"type": "message", "text": "too long", "ref": 2})
        assert (await ann.receive())["type"] == "error"


async def test_a_failing_startup_raises(delivery: Delivery) -> None:
    """An app whose lifespan fails to start fails ChatTest's entry, saying why."""

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise OSError("no database")
        yield

    from contextlib import asynccontextmanager

    host = Starlette(lifespan=asynccontextmanager(lifespan))
    with pytest.raises(RuntimeError, match="no database"):
        async with ChatTest(app=host, delivery=delivery):
            pytest.fail("started")


# --- the README's examples, run as written --------------------------------------------------------


def readme_examples() -> list[str]:
    """The python blocks of the README's "Testing your app" section."""
    text = README.read_text()
    section = text.split("## Testing your app\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_readme_has_the_examples() -> None:
    """The section has the ten-line example and the hooks' example."""
    examples = readme_examples()
    assert len(examples) == 2
    assert len(examples[0].strip().splitlines()) <= 11


@pytest.mark.parametrize("number", [0, 1])
async def test_the_readme_examples_pass(number: int) -> None:
    """Each example's tests pass as written (parametrized ones on each parameter)."""
    namespace: dict[str, Any] = {"__name__": f"readme_example_{number}"}
    exec(compile(readme_examples()[number], f"README.md example {number}", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_") and callable(value)]
    assert tests
    for test in tests:
        if "delivery" in inspect.signature(test).parameters:
            for delivery in ("direct", "queued"):
                await test(delivery)
        else:
            await test()


async def test_a_host_apps_own_denial_is_refused_with_its_text(delivery: Delivery) -> None:
    """A denial that is not chat's JSON (a host's own route) still raises Refused: its text is the detail."""

    async def members_only(websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse("members only", status_code=401))

    host = Starlette(routes=[WebSocketRoute("/ws/{room}", members_only)])
    async with ChatTest(app=host, delivery=delivery) as chat_test:
        with pytest.raises(Refused) as refused:
            async with chat_test.member("lobby"):
                pytest.fail("let in")
    assert (refused.value.status, refused.value.detail) == (401, "members only")


async def test_the_tests_own_exception_comes_out_as_it_was_raised(delivery: Delivery) -> None:
    """An exception raised inside ChatTest leaves it unwrapped (no exception group), after the clean stop."""
    before = other_tasks()
    with pytest.raises(LookupError, match="mine"):
        async with ChatTest(delivery=delivery) as chat_test, chat_test.member("lobby"):
            raise LookupError("mine")
    assert other_tasks() == before
