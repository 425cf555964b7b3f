"""The README's host app (``chat/examples/host.py``) in a real uvicorn process: its signed-in users are the members,
guests are refused, and its word filter runs on every message; under uvicorn's own protocol (the queued writer) and
chat's (the direct writer)."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .clients import WAIT, expect, recv_frame
from .server_process import (
    BIND_ATTEMPTS,
    BIND_CLASH,
    SERVER_FOLDERS,
    ServerProcess,
    environment,
    free_port,
    stop_and_check,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "chat" / "examples" / "host.py"
CHAT_PROTOCOLS = ["--ws", "chat.uvicorn:ChatWebSocketProtocol", "--http", "chat.uvicorn:ChatHttpProtocol"]


def test_the_readme_shows_the_example_file_as_it_is() -> None:
    """The README's host app is chat/examples/host.py, character for character."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert EXAMPLE.read_text() in blocks


@pytest.fixture(params=["uvicorn", "chat"], ids=["queued", "direct"])
def host(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The example app under ``uvicorn``, with uvicorn's protocol classes or chat's."""
    protocols = CHAT_PROTOCOLS if request.param == "chat" else []
    env = environment({"SESSION_SECRET": "test-secret", "CHAT_STORE": "memory://"})
    servers: list[ServerProcess] = []
    try:
        for _ in range(BIND_ATTEMPTS):
            port = free_port()
            argv = [sys.executable, "-m", "uvicorn", "chat.examples.host:app", "--port", str(port), *protocols]
            server = ServerProcess(argv, port, env, tempfile.mkdtemp(dir=SERVER_FOLDERS.name))
            servers.append(server)
            if server.wait_ready():
                break
            assert BIND_CLASH in server.log, server.log
        yield servers[-1]
    finally:
        problems = stop_and_check(servers)
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


async def sign_in(host: ServerProcess, name: str) -> str:
    """Sign in with the example's form; the ``Cookie`` header value of the session it set."""
    async with httpx.AsyncClient(base_url=f"http://{host.base}", timeout=WAIT) as client:
        response = await client.post("/login", data={"name": name})
        assert response.status_code == 303, response.text
        home = await client.get("/")
        assert f"Signed in as {name}" in home.text
        return "; ".join(f"{cookie}={value}" for cookie, value in client.cookies.items())


@asynccontextmanager
async def chat_socket(host: ServerProcess, path: str, cookie: str | None) -> AsyncIterator[ClientConnection]:
    headers = {"Cookie": cookie} if cookie else None
    with anyio.fail_after(WAIT):
        ws = await connect(f"ws://{host.base}/chat{path}", additional_headers=headers, open_timeout=WAIT)
    async with ws:
        yield ws


async def test_signed_in_users_chat_under_their_own_names_through_the_filter(host: ServerProcess) -> None:
    """Ann and Bob, signed in with the host's form, are members under the host's ids and names (a ``name`` in the
    address changes nothing); a mild word reaches Bob starred, a link is refused to Ann alone."""
    ann_cookie, bob_cookie = await sign_in(host, "Ann"), await sign_in(host, "Bob")
    async with (
        chat_socket(host, "/ws?name=Mallory", ann_cookie) as ann,
        chat_socket(host, "/ws/lobby?name=Mallory", bob_cookie) as bob,
    ):
        assert (await expect(ann, "hello"))["you"] == {"id": "user-ann", "name": "Ann"}
        assert (await expect(bob, "welcome"))["you"] == {"id": "user-bob", "name": "Bob"}
        await ann.send(json.dumps({"type": "join", "room": "lobby", "ref": "j"}))
        welcome = await expect(ann, "welcome")
        assert {"id": "user-bob", "name": "Bob"} in welcome["members"]

        await ann.send(json.dumps({"type": "message", "room": "lobby", "text": "see https://example.com", "ref": 1}))
        refused = await expect(ann, "error")
        assert refused == {
            "type": "error",
            "code": "forbidden",
            "detail": "links are not allowed here",
            "ref": 1,
            "room": "lobby",
        }
        await ann.send(json.dumps({"type": "message", "room": "lobby", "text": "what the Heck", "ref": 2}))
        with anyio.fail_after(WAIT):
            while (frame := await recv_frame(bob))["type"] != "message":
                assert frame["type"] == "join", frame
        assert frame["text"] == "what the ****"
        assert frame["from"] == {"id": "user-ann", "name": "Ann"}
        assert frame["seq"] == 1, "the refused message took no seq"


async def test_a_guest_is_refused_with_403(host: ServerProcess) -> None:
    """Without the host's session cookie, both endpoints refuse the handshake with 403 ``forbidden``."""
    for path in ("/ws", "/ws/lobby?name=ann"):
        with pytest.raises(InvalidStatus) as refused, anyio.fail_after(WAIT):
            await connect(f"ws://{host.base}/chat{path}", open_timeout=WAIT)
        response = refused.value.response
        assert response.status_code == 403
        assert json.loads(response.body) == {"type": "error", "code": "forbidden", "detail": "not signed in"}
