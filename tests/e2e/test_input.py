"""What clients send that the server refuses: bad joins, oversized frames, and input that is not valid."""

from __future__ import annotations

import json
import socket

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .clients import WAIT, expect, joined, raw_join, say, wait_closed, wait_health, wait_leave
from .server_process import ServerProcess, StartServer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@pytest.mark.parametrize(
    ("room", "query", "detail"),
    [
        ("-dash-first", {"name": "ann"}, "invalid room"),
        ("r" * 65, {"name": "ann"}, "invalid room"),
        ("ok", {"name": "n" * 33}, "name must be"),
        ("ok", {"name": "   "}, "name must be"),
        ("ok", {"name": "ann", "since": "-1"}, "since must be"),
        ("ok", {"name": "ann", "since": "1", "epoch": "has spaces"}, "epoch must be"),
    ],
)
async def test_an_invalid_join_is_refused_with_http_403_and_a_json_detail(
    server: ServerProcess, room: str, query: dict[str, str], detail: str
) -> None:
    """An invalid room, name, since or epoch gets HTTP 403 with a JSON error body naming the problem."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url(room, **query), open_timeout=WAIT)
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(bytes(response.body or b""))
    assert body["type"] == "error"
    assert body["code"] == "forbidden"
    assert body["detail"].startswith(detail), body
    await wait_health(server, connections=0, rooms=0)


async def test_a_frame_over_max_frame_closes_with_1009(start_server: StartServer) -> None:
    """A frame larger than --max-frame closes that connection with 1009; the others see it leave."""
    server = start_server(max_frame=8192)
    async with joined(server, "limits", "watcher") as (watcher, _), joined(server, "limits", "big") as (big, welcome):
        await expect(watcher, "join")
        assert await say(big, "x" * 4000) == [1]
        await big.send("y" * 8193)
        await wait_closed(big)
        assert big.close_code == 1009
        await wait_leave(watcher, {welcome["you"]["id"]})
        await wait_health(server, connections=1, rooms=1)


BAD_FRAMES: list[str | bytes] = [
    "{not json",
    "{}",
    '{"type": 42}',
    '{"type": "launch"}',
    '{"type": "message"}',
    '{"type": "message", "text": 7}',
    '{"type": "message", "text": "   "}',
    '{"type": "message", "text": "ok", "ref": 1.5}',
    '{"type": "message", "text": "ok", "ref": {"nested": true}}',
    '{"type": "message", "text": "ok", "ref": "' + "r" * 65 + '"}',
    '{"type": "message", "text": "ok", "ref": ' + "9" * 5000 + "}",
    '{"type": "message", "text": NaN}',
    '{"type": "message", "text": "lone \\ud800 surrogate"}',
    '{"type": "message", "text": "ok", "ref": "lone \\udfff"}',
    '{"type": "history", "limit": 0}',
    '{"type": "history", "limit": true}',
    '{"type": "history", "before": "soon"}',
    '{"a":' * 10000 + "1" + "}" * 10000,
    '{"type": "message", "text": "' + "z" * 4001 + '"}',
    "w" * 4001,
    "   ",
    b"\x00\x01binary",
    b"",
]


async def test_bad_frames_get_error_frames_and_the_connection_keeps_working(start_server: StartServer) -> None:
    """Malformed, mistyped, oversized, binary and non-Unicode frames each get an error frame; no traceback."""
    server = start_server(rate_per_second=0)
    async with joined(server, "garbage", "sender") as (sender, _), joined(server, "garbage", "peer") as (peer, _):
        await expect(sender, "join")
        for data in BAD_FRAMES:
            await sender.send(data)
            error = await expect(sender, "error")
            assert error["code"] in ("bad_request", "too_large", "unsupported"), (data[:80], error)
            assert isinstance(error["detail"], str)
            assert error["detail"]
        await sender.send(json.dumps({"type": "ping", "ref": "still here"}))
        assert (await expect(sender, "pong"))["ref"] == "still here"
        assert await say(sender, "after all that") == [1]
        message = await expect(peer, "message")
        assert (message["seq"], message["text"]) == (1, "after all that")


async def test_the_ref_of_a_bad_request_comes_back_in_its_error(server: ServerProcess) -> None:
    """An error answers the request it is about: it carries that request's ref."""
    async with joined(server, "refs", "ann") as (ann, _):
        await ann.send(json.dumps({"type": "history", "limit": 1000, "ref": "h1"}))
        error = await expect(ann, "error")
        assert (error["code"], error["ref"]) == ("bad_request", "h1")
        await ann.send(json.dumps({"type": "message", "text": "t" * 4001, "ref": 99}))
        error = await expect(ann, "error")
        assert (error["code"], error["ref"]) == ("too_large", 99)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(server: ServerProcess) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007, without a traceback."""
    async with joined(server, "utf8", "watcher") as (watcher, _):
        raw, welcome = await raw_join(server, "utf8", "broken")
        try:
            await expect(watcher, "join")
            await anyio.to_thread.run_sync(raw.send_frame, 0x1, b"caf\xc3")
            opcode, payload = await anyio.to_thread.run_sync(raw.recv_frame)
            assert opcode == 0x8
            assert int.from_bytes(payload[:2], "big") == 1007
            await wait_leave(watcher, {welcome["you"]["id"]})
        finally:
            raw.close()


async def test_garbage_instead_of_a_handshake_gets_no_traceback(server: ServerProcess) -> None:
    """Bytes that are not an HTTP request are refused without a traceback; the server keeps serving."""

    def send_garbage() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
            sock.settimeout(WAIT)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass

    await anyio.to_thread.run_sync(send_garbage)
    async with joined(server, "after-garbage", "ann") as (_, welcome):
        assert welcome["members"] == [welcome["you"]]


async def test_settings_from_chat_environment_variables_apply(start_server: StartServer) -> None:
    """A CHAT_* variable configures the process like its flag: CHAT_MAX_TEXT=10 refuses an 11-character text."""
    server = start_server(env={"CHAT_MAX_TEXT": "10"})
    async with joined(server, "env", "ann") as (ann, _):
        assert await say(ann, "x" * 10) == [1]
        await ann.send("y" * 11)
        assert (await expect(ann, "error"))["code"] == "too_large"
