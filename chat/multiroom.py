"""Protocol v1.1 at ``/ws``: one connection, many rooms, each joined and left by a frame.

Each joined room is a ``Subscription`` of the one connection (``chat.connection``): what the
registry holds for the member there. Frames are answered one at a time, so a join's welcome is
queued before the next frame is read. A join costs what a v1 handshake costs the server, so it
draws on the address's handshake rate as well as on the connection's rate limit, and waits for the
connection's earlier welcomes to leave its buffer first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import anyio
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from chat.auth import Identity
from chat.chat import Chat
from chat.connection import Connection, Subscription
from chat.endpoint import LEAVE_TIMEOUT, SocketEndpoint
from chat.exceptions import (
    BadRequest,
    Forbidden,
    HookFailed,
    InvalidJoin,
    RateLimited,
    Refuse,
    TooManyRooms,
    Unavailable,
)
from chat.logs import fields
from chat.protocol import (
    Hello,
    Join,
    JoinRequest,
    Leave,
    Ping,
    Ref,
    RoomRequest,
    decode_multi,
    encode_hello,
    encode_left,
    encode_pong,
    parse_hello,
)

logger = logging.getLogger("chat")


class MultiRoomEndpoint(SocketEndpoint):
    """Protocol v1.1: many rooms on one connection, ``/ws?name=N&batch=1`` (and ``token=T``), by ``join``/``leave``."""

    __slots__ = ("_leaving", "rooms")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self.rooms: dict[str, Subscription] = {}
        """The rooms joined, each the member's subscription there."""
        self._leaving: set[asyncio.Task[None]] | None = None  # the leaves of rooms the server took the member out of

    def handshake(
        self, websocket: WebSocket, query: Mapping[str, str], chat: Chat, identity: Identity | None
    ) -> tuple[str, Hello]:
        return "", parse_hello(query, None if identity is None else identity.name)

    async def opened(self, chat: Chat, connection: Connection) -> None:
        """Say hello: who the connection is; rooms come one ``join`` at a time."""
        chat.multiroom.add(connection)
        connection.welcome(encode_hello(connection.member), 0)

    def parse_frame(self, data: str | bytes, max_text: int) -> RoomRequest:
        return decode_multi(data, max_text)

    async def answer(self, chat: Chat, connection: Connection, request: RoomRequest) -> None:
        if isinstance(request, Ping):
            connection.send(encode_pong(request.ref))
            return
        if isinstance(request, Join):
            await self.join(chat, connection, request)
            return
        ref = getattr(request, "ref", None)
        subscription = self.rooms.get(request.room)
        if subscription is None:
            raise BadRequest(f"not in room {request.room!r}: join it first", ref, request.room)
        if isinstance(request, Leave):
            await self.leave(chat, connection, subscription, ref)
        else:
            await self.answer_in(chat, connection, request.room, request)

    async def join(self, chat: Chat, connection: Connection, request: Join) -> None:
        """Join a room: its welcome (with the join's ref), or an error frame and nothing else changed."""
        room, ref = request.room, request.ref
        self.check_join(chat, connection, request)
        if chat.hooks.checks_joins:
            await self.may_enter(chat, room, ref)
            if not connection.is_open or room in self.rooms:
                return
        subscription = self.rooms[room] = Subscription(connection, room, self._taken_out)
        subscription.presence = request.presence
        try:
            await chat.join(subscription, JoinRequest(room, connection.member.name, request.since, request.epoch), ref)
        except Unavailable as exc:
            if self.rooms.get(room) is subscription:
                del self.rooms[room]
            exc.ref, exc.room = ref, room
            raise
        if self.rooms.get(room) is not subscription:
            # Left while joining: the socket closed (its leaves ran before this join registered), or the
            # server took the member out again. Leaving twice is harmless; a stale registration is not.
            with anyio.move_on_after(LEAVE_TIMEOUT, shield=True):
                await chat.leave(subscription)
            return
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", fields(event="join", room=room, member=connection.member.id))

    def check_join(self, chat: Chat, connection: Connection, request: Join) -> None:
        """Raise the RequestError that refuses a join, if one does."""
        room, ref = request.room, request.ref
        if room in self.rooms:
            raise BadRequest(f"already in room {room!r}", ref, room)
        settings = chat.settings
        if len(self.rooms) >= settings.max_rooms_per_connection:
            raise TooManyRooms(
                f"at most {settings.max_rooms_per_connection} rooms per connection: leave one first", ref, room
            )
        try:
            chat.access.authorize(self.identity, room)
        except InvalidJoin as exc:
            raise Forbidden(exc.detail, ref, room) from None
        if connection.buffered > settings.queue_bytes:
            # Each welcome may pass the buffer's limit (it is bounded by the history instead), but only
            # one at a time: a member joining room after room without reading holds no more than v1's.
            raise RateLimited("earlier welcomes are still on their way to you: join again in a moment", ref, room)
        if self.admitted is not None and not chat.access.limits.allow_handshake(self.admitted, anyio.current_time()):
            raise RateLimited("too many joins and handshakes from your address: slow down", ref, room)

    async def may_enter(self, chat: Chat, room: str, ref: Ref) -> None:
        """Raise the RequestError that refuses a join when the host's ``can_join`` hook keeps the member out."""
        assert self.identity is not None, "a guest gets an identity when there are hooks"
        try:
            await chat.hooks.can_join(self.identity, room)
        except Refuse as exc:
            raise Forbidden(exc.detail, ref, room) from None
        except HookFailed as exc:
            raise Unavailable(exc.detail, ref, room) from None

    async def leave(self, chat: Chat, connection: Connection, subscription: Subscription, ref: Ref) -> None:
        """Leave a room: the others learn it, then the member gets ``left``."""
        subscription.gone = True  # nothing more for it, and no ``left`` of the server's for this room now
        with anyio.move_on_after(LEAVE_TIMEOUT, shield=True):
            await chat.leave(subscription)
        del self.rooms[subscription.room]
        connection.send(encode_left(subscription.room, ref))
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", fields(event="left", room=subscription.room, member=connection.member.id))

    async def leave_all(self, chat: Chat, connection: Connection) -> None:
        chat.multiroom.discard(connection)
        rooms = self.rooms
        while rooms:
            _, subscription = rooms.popitem()
            subscription.gone = True
            await chat.leave(subscription)
        if self._leaving:
            with anyio.move_on_after(LEAVE_TIMEOUT):
                await asyncio.gather(*self._leaving, return_exceptions=True)

    def _taken_out(self, subscription: Subscription) -> None:
        """The server took the member out of a room (restart, removed): forget it, announce the leave."""
        if self.rooms.get(subscription.room) is subscription:
            del self.rooms[subscription.room]
        leaving = self._leaving
        if leaving is None:
            leaving = self._leaving = set()
        task = asyncio.get_running_loop().create_task(self.chat.leave(subscription))
        leaving.add(task)
        task.add_done_callback(self._left)

    def _left(self, task: asyncio.Task[None]) -> None:
        """A leave the server started is done: forget it, and log it if it failed."""
        if self._leaving is not None:
            self._leaving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("leave failed", exc_info=task.exception())
