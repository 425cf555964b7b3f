"""The WebSocket endpoint: protocol v1 over the three hooks, for one connection.

Starlette's ``WebSocketEndpoint`` owns the receive loop. Under the server's own protocol frames go
straight to the socket (the ``chat.direct`` ASGI extension) and nothing else runs per connection;
under any other server ``dispatch`` wraps the loop in a task group that owns this connection's
writer task, so the writer never outlives the socket.
"""

from __future__ import annotations

import logging
from typing import cast

import anyio
from anyio.abc import TaskGroup
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import JSONResponse
from starlette.types import Message as ASGIMessage
from starlette.types import Scope
from starlette.websockets import WebSocket

from chat.connection import Connection, DirectWriter
from chat.exceptions import ConnectionRefused, FrameTooLarge, InvalidJoin, RequestError, ServerBusy, Unavailable
from chat.hub import Chat
from chat.limits import TokenBucket
from chat.protocol import (
    HistoryQuery,
    Member,
    Ping,
    SendText,
    Typing,
    decode,
    encode_ack,
    encode_error,
    encode_history,
    encode_pong,
    encode_request_error,
    new_member_id,
    parse_join,
)

logger = logging.getLogger("chat")

DENIAL_EXTENSION = "websocket.http.response"
DIRECT_EXTENSION = "chat.direct"


def chat_of(scope: Scope) -> Chat:
    """The ``Chat`` of the app serving this scope (``create_app`` puts it in ``app.state.chat``)."""
    chat = getattr(scope["app"].state, "chat", None)
    if not isinstance(chat, Chat):
        raise RuntimeError("ChatEndpoint needs app.state.chat: build the app with chat.create_app()")
    return chat


class ChatEndpoint(WebSocketEndpoint):
    """One member in one room: ``/ws/{room}?name=N&since=S&epoch=E``."""

    encoding = None
    task_group: TaskGroup | None = None
    connection: Connection | None = None
    bucket: TokenBucket
    admitted = False

    async def dispatch(self) -> None:
        """Run the receive loop; without direct writes, inside a task group that owns the writer."""
        if direct_writer(self.scope) is not None:
            await super().dispatch()
            return
        async with anyio.create_task_group() as task_group:
            self.task_group = task_group
            try:
                await super().dispatch()
            finally:
                task_group.cancel_scope.cancel()

    async def decode(self, websocket: WebSocket, message: ASGIMessage) -> str | bytes:
        """Hand the frame over as it came: text as str, binary as bytes."""
        text = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    async def on_connect(self, websocket: WebSocket) -> None:
        """Validate the join, admit the connection, start its writer, join the room."""
        chat = chat_of(websocket.scope)
        settings = chat.settings
        try:
            request = parse_join(websocket.path_params.get("room", ""), websocket.query_params)
        except InvalidJoin as exc:
            await refuse(websocket, exc)
            return
        if not chat.registry.admit():
            await websocket.accept()
            await websocket.close(ServerBusy.close_code, "server full")
            return
        self.admitted = True
        await websocket.accept()
        member = Member(new_member_id(), request.name)
        writer = direct_writer(websocket.scope)
        connection = Connection(
            websocket, member, request.room, settings.queue_bytes, settings.send_timeout, writer, request.batch
        )
        self.connection = connection
        self.bucket = TokenBucket(settings.rate_per_second, settings.rate_burst, anyio.current_time())
        if writer is None:
            assert self.task_group is not None, "on_connect runs inside dispatch (or a test's task group)"
            self.task_group.start_soon(self._write, chat, connection)
        try:
            await chat.join(connection, request)
        except Unavailable as exc:
            connection.close(ServerBusy.close_code, f"unavailable: {exc.detail}")

    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        """Answer one client frame; bad input gets an error frame and the connection stays."""
        connection = self.connection
        if connection is None or not connection.is_open:
            return
        chat = chat_of(websocket.scope)
        if _frame_size(data, chat.settings.max_frame) > chat.settings.max_frame:
            connection.close(FrameTooLarge.close_code, f"frame larger than {chat.settings.max_frame} bytes")
            return
        try:
            request = decode(data, chat.settings.max_text)
            if not self.bucket.allow(anyio.current_time()):
                ref = getattr(request, "ref", None)
                connection.send(encode_error("rate_limited", "too many frames: slow down", ref))
                return
            await self._answer(chat, connection, request)
        except RequestError as exc:
            connection.send(encode_request_error(exc))

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        """Leave the room and give the connection's place back."""
        chat = chat_of(websocket.scope)
        if self.connection is not None:
            self.connection.gone = True
            await chat.leave(self.connection)
        if self.admitted:
            self.admitted = False
            chat.registry.release()

    async def _answer(self, chat: Chat, connection: Connection, request: object) -> None:
        if isinstance(request, SendText):
            try:
                message = await chat.publish(connection.room, connection.member, request.text)
            except Unavailable as exc:
                exc.ref = request.ref
                raise
            if request.ref is not None:
                connection.send(encode_ack(request.ref, message.seq))
        elif isinstance(request, Typing):
            await chat.typing(connection.room, connection.member)
        elif isinstance(request, HistoryQuery):
            try:
                messages = await chat.backend.history(connection.room, request.before, request.limit)
            except Unavailable as exc:
                exc.ref = request.ref
                raise
            connection.send(encode_history(connection.room, messages, request.ref))
        elif isinstance(request, Ping):
            connection.send(encode_pong(request.ref))

    async def _write(self, chat: Chat, connection: Connection) -> None:
        """Drain the connection's buffer; once it is closed or gone, take the member out of the room."""
        await connection.run()
        await chat.leave(connection)


def direct_writer(scope: Scope) -> DirectWriter | None:
    """The socket's direct writer, when the server offers one."""
    extension = scope.get("extensions", {}).get(DIRECT_EXTENSION)
    return None if extension is None else cast(DirectWriter, extension["writer"])


async def refuse(websocket: WebSocket, error: ConnectionRefused) -> None:
    """Refuse before accept: an HTTP status with a JSON body where the server can, else a close frame."""
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        body = {"type": "error", "code": "forbidden", "detail": error.detail}
        await websocket.send_denial_response(JSONResponse(body, status_code=error.http_status))
    else:
        await websocket.close(error.close_code, error.detail)


def _frame_size(data: str | bytes, limit: int) -> int:
    """The frame's size in bytes, encoding text only when its length alone cannot settle it."""
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))
