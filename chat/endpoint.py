"""The WebSocket endpoints, one connection each: protocol v1 (``/ws/{room}``) and v1.1 (``/ws``, many rooms).

Starlette's ``WebSocketEndpoint`` owns the receive loop. Under the server's own protocol frames go
straight to the socket (the ``chat.direct`` ASGI extension) and nothing else runs per connection;
under any other server ``dispatch`` wraps the loop in a task group that owns this connection's
writer task, so the writer never outlives the socket.

``SocketEndpoint`` holds what both protocols share per connection: who may connect, admission, the
rate limit, the abuse counter, the token's expiry, publishing. ``ChatEndpoint`` (v1) is in one room
for the socket's life; ``chat.multiroom.MultiRoomEndpoint`` (v1.1) joins and leaves rooms by frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from asyncio import TimerHandle
from collections.abc import Generator, Mapping
from dataclasses import replace
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qsl

import anyio
from anyio.abc import TaskGroup
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from chat.abuse import Misconduct, address_key
from chat.access import Headers
from chat.auth import Identity
from chat.chat import Chat, chat_of
from chat.connection import (
    DIRECT_EXTENSION,
    Connection,
    DirectConnection,
    DirectWriter,
    QueuedConnection,
)
from chat.exceptions import (
    ConnectionRefused,
    Forbidden,
    FrameTooLarge,
    HookFailed,
    HookUnavailable,
    InvalidJoin,
    PolicyViolation,
    RateLimited,
    Refuse,
    RequestError,
    ServerBusy,
    SlowConsumer,
    Unavailable,
)
from chat.hooks import guest_identity
from chat.limits import TokenBucket
from chat.logs import fields
from chat.protocol import (
    Hello,
    HistoryQuery,
    JoinRequest,
    Member,
    Message,
    Ping,
    RoomRequest,
    SendText,
    Typing,
    decode,
    encode_ack,
    encode_history,
    encode_pong,
    encode_request_error,
    new_member_id,
    parse_join,
)
from chat.settings import Settings

logger = logging.getLogger("chat")

DENIAL_EXTENSION = "websocket.http.response"
LEAVE_TIMEOUT = 5.0
MISCONDUCT = frozenset({"bad_request", "unsupported", "too_large"})
MAX_PUBLISHING = 64
"""A member's messages on their way to the backend at once; beyond that its next frame waits."""


class SocketEndpoint(WebSocketEndpoint):
    """What every chat connection does, whatever its protocol: the subclasses say how it enters rooms.

    One lives as long as its connection: every attribute is in a slot (Starlette's three too), so it
    has no instance dict.
    """

    __slots__ = (
        "_publish_slot",
        "admitted",
        "bucket",
        "chat",
        "connection",
        "expiry",
        "identity",
        "misconduct",
        "publishing",
        "receive",
        "scope",
        "send",
        "task_group",
    )
    encoding = None
    chat: Chat  # set by on_connect

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self.task_group: TaskGroup | None = None
        self.connection: Connection | None = None
        self.identity: Identity | None = None
        self.bucket: TokenBucket | None = None  # made on the first frame: an idle connection has none
        self.admitted: str | None = None  # the client address this connection is counted under
        self.expiry: TimerHandle | None = None
        self.misconduct: Misconduct | None = None
        self.publishing = 0  # messages started and not yet answered
        self._publish_slot: asyncio.Future[None] | None = None

    def __await__(self) -> Generator[Any, None, None]:
        """Dispatch; under the server's own protocol, the receive loop itself (no coroutine around it to keep)."""
        if direct_writer(self.scope) is not None:
            return WebSocketEndpoint.dispatch(self).__await__()
        return self.dispatch().__await__()

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
                connection = self.connection
                if isinstance(connection, QueuedConnection):
                    connection.finish()  # the writer returns by itself, its last frames sent or the socket gone
                else:
                    task_group.cancel_scope.cancel()

    async def on_connect(self, websocket: WebSocket) -> None:
        """Check who connects and what they ask for, admit the connection, start its writer, open it."""
        scope = websocket.scope
        chat = self.chat = chat_of(scope)
        settings = chat.settings
        address = client_address(scope)
        query = query_of(scope)
        try:
            headers = scope.get("headers", [])
            chat.access.screen(address, headers, anyio.current_time())
            if chat.hooks.authenticates:
                identity = await self.authenticate(websocket, chat, headers, query)
            else:
                identity = chat.access.verify(headers, query)
            room, hello = self.handshake(websocket, query, chat, identity)
            if chat.hooks.decides and identity is None:
                identity = guest_identity(new_member_id(), hello.name)
            self.identity = identity
            if room and chat.hooks.checks_joins:
                assert identity is not None, "a guest gets an identity when there are hooks"
                await self.may_join(chat, identity, room)
            chat.access.acquire(address)
        except ConnectionRefused as exc:
            log_refusal(chat, address, exc)
            await refuse(websocket, exc)
            return
        if not chat.registry.admit():
            chat.access.release(address)
            busy = ServerBusy("server full")
            log_refusal(chat, address, busy)
            await websocket.accept()
            await websocket.close(busy.close_code, busy.detail)
            return
        self.admitted = address
        chat.metrics.connections.inc()
        scope["headers"] = ()  # all read: kept, they would take ~0.8 KiB for as long as the connection lasts
        await websocket.accept()
        member = Member(new_member_id() if identity is None else identity.member_id, hello.name)
        connection = self.connection = open_connection(websocket, member, room, hello.batch, settings)
        if isinstance(connection, QueuedConnection):
            assert self.task_group is not None, "on_connect runs inside dispatch (or a test's task group)"
            self.task_group.start_soon(self._write, chat, connection)
        if identity is not None and identity.expires != math.inf:
            self.expiry = close_on_expiry(chat, connection, identity)
        if logger.isEnabledFor(logging.INFO):
            line = fields(event="connect", room=room or None, member=member.id, name=member.name, address=address)
            logger.info("%s", line)
        await self.opened(chat, connection)

    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        """Answer one client frame; bad input gets an error frame and the connection stays (up to a limit)."""
        connection = self.connection
        if connection is None or not connection.is_open:
            return
        chat = self.chat  # on_connect set it before making the connection
        settings = chat.settings
        if _frame_size(data, settings.max_frame) > settings.max_frame:
            connection.close(FrameTooLarge(f"frame larger than {settings.max_frame} bytes"))
            return
        try:
            request = self.parse_frame(data, settings.max_text)
            now = anyio.current_time()
            bucket = self.bucket
            if bucket is None:  # full, as one made at the connect would be by now
                bucket = self.bucket = TokenBucket(settings.rate_per_second, settings.rate_burst, now)
            if not bucket.allow(now):
                self._rate_limited(chat, connection, request)
                return
            await self.answer(chat, connection, request)
            if self.misconduct is not None:
                self.misconduct.good_frame()
        except RequestError as exc:
            _refuse_frame(chat, connection, exc)
            limit = settings.max_bad_frames
            if exc.code in MISCONDUCT and limit and self._misconduct().bad_frame(limit):
                _policy_close(chat, connection, PolicyViolation(f"{limit} bad frames in a row", "bad_frames"))

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        """Leave the rooms and give the connection's place back."""
        chat = chat_of(websocket.scope)
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        connection = self.connection
        try:
            if connection is not None:
                connection.gone = True
                code = connection.close_code or close_code
                if isinstance(connection.closed_by, SlowConsumer):
                    chat.metrics.slow_consumers.inc()
                if logger.isEnabledFor(logging.INFO):
                    room = connection.room or None
                    logger.info("%s", fields(event="disconnect", room=room, member=connection.member.id, code=code))
                await self._leave_all_shielded(chat, connection)
        finally:
            # Even when cancelled while leaving: a place never given back would lock its address out.
            if self.admitted is not None:
                chat.access.release(self.admitted)
                self.admitted = None
                chat.registry.release()
                chat.metrics.connections.dec()

    async def authenticate(
        self, websocket: WebSocket, chat: Chat, headers: Headers, query: Mapping[str, str]
    ) -> Identity | None:
        """Who the host's ``authenticate`` hook says connects; failing that, who a token says (token auth on); or
        raise ConnectionRefused."""
        try:
            identity = await chat.hooks.authenticate(websocket)
        except Refuse as exc:
            raise InvalidJoin(exc.detail, "hook") from None
        except HookFailed as exc:
            raise HookUnavailable(exc.detail) from None
        if identity is not None:
            return identity
        if chat.access.verifier is None:
            raise InvalidJoin("not signed in", "hook")
        return chat.access.verify(headers, query)

    async def may_join(self, chat: Chat, identity: Identity, room: str) -> None:
        """Raise ConnectionRefused when the host's ``can_join`` hook keeps the member out of the handshake's room."""
        try:
            await chat.hooks.can_join(identity, room)
        except Refuse as exc:
            raise InvalidJoin(exc.detail, "hook") from None
        except HookFailed as exc:
            raise HookUnavailable(exc.detail) from None

    def handshake(
        self, websocket: WebSocket, query: Mapping[str, str], chat: Chat, identity: Identity | None
    ) -> tuple[str, Hello]:
        """Validate the handshake (``query``: its parameters): the connection's room ("" for none) and its name and
        options; or raise ConnectionRefused."""
        raise NotImplementedError

    async def opened(self, chat: Chat, connection: Connection) -> None:
        """The connection is accepted and admitted: send its first frames."""
        raise NotImplementedError

    def parse_frame(self, data: str | bytes, max_text: int) -> RoomRequest:
        """One client frame as a request, or the RequestError that answers it."""
        raise NotImplementedError

    async def answer(self, chat: Chat, connection: Connection, request: RoomRequest) -> None:
        """Do what one valid request asks."""
        raise NotImplementedError

    async def leave_all(self, chat: Chat, connection: Connection) -> None:
        """Take the member out of every room the connection is in; safe to call again."""
        raise NotImplementedError

    async def answer_in(
        self, chat: Chat, connection: Connection, room: str, request: SendText | Typing | HistoryQuery
    ) -> None:
        """Answer a request about ``room``, a room the connection is in."""
        if isinstance(request, SendText):
            if chat.hooks.decides:
                request = await self.moderate(chat, room, request)
            slot = self.publish(chat, connection, room, request)
            if slot is not None:  # too many of the member's messages on their way: wait for one
                await slot
        elif isinstance(request, Typing):
            await chat.typing(room, connection.member)
        else:
            await self.history(chat, connection, room, request)

    async def moderate(self, chat: Chat, room: str, request: SendText) -> SendText:
        """The message as the host's ``on_message`` hook lets it out; or raise the RequestError that refuses it."""
        assert self.identity is not None, "a guest gets an identity when there are hooks"
        try:
            text = await chat.hooks.on_message(self.identity, room, request.text, chat.settings.max_text)
        except Refuse as exc:
            raise Forbidden(exc.detail, request.ref, request.room or None) from None
        except HookFailed as exc:
            raise Unavailable(exc.detail, request.ref, request.room or None) from None
        return request if text is request.text else replace(request, text=text)

    def publish(self, chat: Chat, connection: Connection, room: str, request: SendText) -> asyncio.Future[None] | None:
        """Start publishing a member's message; a future to await when too many are on their way already.

        Not awaited: the member's next messages may follow at once (a Redis backend sends the
        publishes of one turn in one write). The ack goes out as soon as the backend has the seq
        (memory: before start_publish returns; Redis: in the callback that read the reply), not a
        loop turn later as a done callback of the future would.
        """
        started = time.perf_counter()
        self.publishing += 1
        done = partial(self._publish_done, chat, connection, room, request, started)
        future = chat.start_publish(room, connection.member, request.text, done)
        if self.publishing >= MAX_PUBLISHING and not future.done():
            slot = self._publish_slot = asyncio.get_running_loop().create_future()
            return slot
        return None

    async def history(self, chat: Chat, connection: Connection, room: str, request: HistoryQuery) -> None:
        """Send a page of the room's history."""
        try:
            messages = await chat.backend.history(room, request.before, request.limit)
        except Unavailable as exc:
            exc.ref = request.ref
            exc.room = request.room or None
            raise
        connection.send(encode_history(room, messages, request.ref))

    def _rate_limited(self, chat: Chat, connection: Connection, request: RoomRequest) -> None:
        """Refuse a frame over the rate limit; close a connection that keeps going over it."""
        room = getattr(request, "room", "") or None
        _refuse_frame(chat, connection, RateLimited("too many frames: slow down", getattr(request, "ref", None), room))
        chat.metrics.rate_limited.inc()
        limit = chat.settings.max_rate_limited_per_minute
        if limit and self._misconduct().rate_limited(anyio.current_time(), limit):
            error = PolicyViolation(f"{limit} frames over the rate limit within a minute", "rate_limited")
            _policy_close(chat, connection, error)

    def _misconduct(self) -> Misconduct:
        if self.misconduct is None:
            self.misconduct = Misconduct(anyio.current_time())
        return self.misconduct

    def _publish_done(
        self,
        chat: Chat,
        connection: Connection,
        room: str,
        request: SendText,
        started: float,
        future: asyncio.Future[Message],
    ) -> None:
        """Ack a published message, or answer why it could not be; let the member's next frame in."""
        self.publishing -= 1
        slot = self._publish_slot
        if slot is not None and not slot.done():
            slot.set_result(None)
        if future.cancelled():
            return
        error = future.exception()
        ref = request.ref
        if error is None:
            chat.published(started, future.result())
            if ref is not None:
                connection.send(encode_ack(ref, future.result().seq, room))
            return
        if not isinstance(error, Unavailable):
            logger.error("publishing failed", exc_info=error)
            error = Unavailable("message not published")
        error.ref = ref
        error.room = request.room or None
        _refuse_frame(chat, connection, error)

    async def _write(self, chat: Chat, connection: QueuedConnection) -> None:
        """Drain the connection's buffer; once it is closed or gone, take the member out of its rooms."""
        await connection.run()
        await self._leave_all_shielded(chat, connection)

    async def _leave_all_shielded(self, chat: Chat, connection: Connection) -> None:
        """``leave_all``, shielded and bounded: a leave cancelled half done (unregistered here, not yet
        announced) would never be announced by anyone."""
        with anyio.move_on_after(LEAVE_TIMEOUT, shield=True):
            await self.leave_all(chat, connection)


class ChatEndpoint(SocketEndpoint):
    """Protocol v1: one member in one room, ``/ws/{room}?name=N&since=S&epoch=E&batch=1`` (and ``token=T``)."""

    __slots__ = ("request",)
    request: JoinRequest | None  # the handshake's, until the join

    def handshake(
        self, websocket: WebSocket, query: Mapping[str, str], chat: Chat, identity: Identity | None
    ) -> tuple[str, Hello]:
        request = self.request = parse_join(
            websocket.path_params.get("room", ""), query, None if identity is None else identity.name
        )
        chat.access.authorize(identity, request.room)
        return request.room, Hello(request.name, request.batch)

    async def opened(self, chat: Chat, connection: Connection) -> None:
        """Join the room the address names."""
        request, self.request = self.request, None
        assert request is not None, "handshake() ran first"
        connection.presence = request.presence
        try:
            await chat.join(connection, request)
        except Unavailable as exc:
            connection.close(ServerBusy(f"unavailable: {exc.detail}", reason="unavailable"))

    def parse_frame(self, data: str | bytes, max_text: int) -> RoomRequest:
        return decode(data, max_text)

    async def answer(self, chat: Chat, connection: Connection, request: RoomRequest) -> None:
        if isinstance(request, Ping):
            connection.send(encode_pong(request.ref))
        elif isinstance(request, SendText | Typing | HistoryQuery):
            await self.answer_in(chat, connection, connection.room, request)

    async def leave_all(self, chat: Chat, connection: Connection) -> None:
        await chat.leave(connection)


def _refuse_frame(chat: Chat, connection: Connection, error: RequestError) -> None:
    """Answer a frame with its ``error`` frame, and count it."""
    connection.send(encode_request_error(error))
    chat.metrics.errors.labels(error.code).inc()


def _policy_close(chat: Chat, connection: Connection, error: PolicyViolation) -> None:
    """Count a 1008 close under its reason (``chat_policy_closes``) and close the connection with it.

    It counts even if the connection is already closed (``close`` is then a no-op): a caller for which that
    must not count checks ``connection.is_open`` first.
    """
    chat.metrics.policy_closes.labels(error.reason).inc()
    connection.close(error)


def open_connection(websocket: WebSocket, member: Member, room: str, batch: bool, settings: Settings) -> Connection:
    """The member's way to its socket: direct where the server offers it, else queued (for a writer task)."""
    writer = direct_writer(websocket.scope)
    if writer is None:
        return QueuedConnection(websocket, member, room, settings.queue_bytes, settings.send_timeout, batch)
    writer.stall_timeout = settings.send_timeout
    writer.batch = batch
    writer.write_delay = settings.write_delay
    connection = DirectConnection(writer, member, room, settings.queue_bytes)
    writer.on_stall = connection.stalled
    return connection


def direct_writer(scope: Scope) -> DirectWriter | None:
    """The socket's direct writer, when the server offers one."""
    extension = scope.get("extensions", {}).get(DIRECT_EXTENSION)
    return None if extension is None else cast(DirectWriter, extension["writer"])


def query_of(scope: Scope) -> dict[str, str]:
    """The query's parameters, the last value of each name, as Starlette's ``QueryParams`` reads them (not kept)."""
    query = scope.get("query_string", b"").decode("latin-1")
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    pairs = (pair.partition("=") for pair in query.split("&") if pair)  # nothing to unquote: parse_qsl's result
    return {name: value for name, _, value in pairs}


def client_address(scope: Scope) -> str:
    """The key the client's address is counted under (uvicorn puts the forwarded address in ``client``)."""
    client = scope.get("client")
    return address_key(client[0] if client else None)


def close_on_expiry(chat: Chat, connection: Connection, identity: Identity) -> TimerHandle:
    """A timer (no task) that closes the connection with 1008 when its token expires."""

    def expire() -> None:
        if connection.is_open:
            _policy_close(chat, connection, PolicyViolation("token expired", "token_expired"))

    delay = max(0.0, identity.expires - time.time())
    return asyncio.get_running_loop().call_later(delay, expire)


def log_refusal(chat: Chat, address: str, error: ConnectionRefused) -> None:
    """Count the refusal by reason and log it (a few lines a second at most; never a token)."""
    chat.metrics.refusals.labels(error.reason).inc()
    unlogged = chat.refusal_log.allow(time.monotonic())
    if unlogged is None:
        return
    status = error.close_code if isinstance(error, ServerBusy) else error.http_status
    line = fields(
        event="refused",
        address=address,
        status=status,
        reason=error.reason,
        detail=error.detail,
        unlogged=unlogged or None,
    )
    logger.info("%s", line)


async def refuse(websocket: WebSocket, error: ConnectionRefused) -> None:
    """Refuse before accept: an HTTP status with a JSON body where the server can, else a close frame."""
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        body = {"type": "error", "code": error.code, "detail": error.detail}
        await websocket.send_denial_response(JSONResponse(body, status_code=error.http_status))
    else:
        await websocket.close(error.close_code, error.detail)


def _frame_size(data: str | bytes, limit: int) -> int:
    """The frame's size in bytes, encoding text only when its length alone cannot settle it."""
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))
