"""One chat app's shared state (settings, backend, registry, access, metrics) and the steps every entry point shares.

The endpoint, the HTTP routes and the lifespan all go through one ``Chat``; it starts lazily, so
the app also works mounted in a host that never runs the sub-app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import anyio
from starlette.types import Scope

from chat.access import Access
from chat.backends import Backend, PublishDone, open_backend
from chat.backends.stored import StoredBackend
from chat.connection import Connection
from chat.exceptions import GoingAway, Unavailable
from chat.hooks import HookRunner, Hooks, load_hooks
from chat.logs import Throttle, fields
from chat.metrics import Metrics
from chat.protocol import JoinRequest, Member, Message, Ref, Signal, encode_welcome
from chat.rooms import RoomRegistry
from chat.settings import Settings
from chat.stores import Store

logger = logging.getLogger("chat")

REFUSAL_LOG_RATE = 10.0
"""Refusal lines per second at most: a flood of refused handshakes must not become a flood of log lines."""


class Chat:
    """One per app: what every connection of the app shares."""

    def __init__(self, settings: Settings | None = None, backend: Backend | None = None, hooks: object = None) -> None:
        self.settings = settings or Settings.from_env()
        self.backend = backend or open_backend(self.settings)
        self.store: Store | None = None
        relay = self.backend
        if isinstance(relay, StoredBackend):
            self.store = relay.store
            relay = relay.relay_backend
        self.backend_name = relay.name
        self.store_name = self.store.name if self.store is not None else relay.name
        self.access = Access(self.settings)
        self.metrics = Metrics(self.settings)
        if hooks is None:
            hooks = load_hooks(self.settings.hooks)
        self.hooks = HookRunner(Hooks.of(hooks), self.settings.hook_timeout, self.metrics)
        self.registry = RoomRegistry(
            self.backend,
            self.settings.max_connections,
            self.metrics,
            self.settings.presence_window,
            self.settings.presence_window_max,
        )
        self.backend.on_state = self._backend_state
        self._backend_up: bool | None = None
        self.refusal_log = Throttle(REFUSAL_LOG_RATE)
        self.multiroom: set[Connection] = set()
        """The open ``/ws`` connections: the registry knows them only by the rooms they are in, if any."""
        self._received = self.metrics.received.labels("member")
        self._started = False
        self._start_lock = anyio.Lock()

    async def start(self) -> None:
        """Connect the backend once; later calls return at once."""
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.backend.start(self.registry.deliver)
                self.hooks.restart()
                self._started = True
                if self.store is not None:
                    logger.info("%s", fields(event="store", store=self.store.name, location=self.store.location))
                if self._backend_up is None:
                    self._backend_state(await self.backend.healthy())

    async def stop(self) -> None:
        """Close every connection with 1001 and disconnect the backend."""
        going_away = GoingAway("server shutting down")
        for connections in self.registry.rooms().values():
            for connection in connections:
                connection.close(going_away)
        for connection in list(self.multiroom):
            connection.close(going_away)
        await self.hooks.stop()
        if self._started:
            self._started = False
            await self.backend.stop()
        self.metrics.process_stopped(os.getpid())

    async def join(self, connection: Connection, request: JoinRequest, ref: Ref = None) -> None:
        """Register the connection, announce its member (on its first connection in the room), queue its welcome.

        The welcome lists the room's members as they are now (``RoomRegistry.welcome_members``); what
        changes after it reaches the newcomer with the room's next announcement.

        ``ref``: a ``/ws`` join's, echoed in the welcome.
        """
        await self.start()
        first = await self.registry.add(connection)
        try:
            snapshot = await self.backend.enter(connection.room, connection.member, first, request.since, request.epoch)
        except Unavailable:
            await self.leave(connection, joined=False)
            raise
        if first and self.hooks.watches_rooms:
            self.hooks.joined(connection.member, connection.room)
        frame = encode_welcome(
            connection.room,
            connection.member,
            self.registry.welcome_members(connection),
            snapshot.seq,
            snapshot.epoch,
            snapshot.messages,
            snapshot.recovered,
            ref,
        )
        connection.welcome(frame, snapshot.seq)

    async def leave(self, connection: Connection, joined: bool = True) -> None:
        """Unregister the connection, announce the leave (its member's last connection there); safe to call again.

        ``joined``: False for a join that failed, which the host's ``left`` hook is not told of.
        """
        try:
            if await self.registry.remove(connection):
                if joined and self.hooks.watches_rooms:
                    self.hooks.left(connection.member, connection.room)
                await self.backend.leave(connection.room, connection.member)
        except Unavailable as exc:
            logger.warning("leave of %s from %s not announced: %s", connection.member.id, connection.room, exc.detail)

    async def publish(self, room: str, sender: Member, text: str, source: str = "member") -> Message:
        """Store and deliver a message; raises Unavailable when the backend cannot take it."""
        await self.start()
        started = time.perf_counter()
        message = await self.backend.publish(room, sender, text)
        self.published(started, message, source)
        return message

    def start_publish(
        self, room: str, sender: Member, text: str, done: PublishDone | None = None
    ) -> asyncio.Future[Message]:
        """Publish a member's message without waiting for it (the app has started: the member joined).

        Messages started one after the other get their seqs in that order; ``done`` is called with
        the future as soon as it is resolved (``Backend.start_publish``); call ``published`` once
        the future has the message.
        """
        return self.backend.start_publish(room, sender, text, done)

    def published(self, started: float, message: Message, source: str = "member") -> None:
        """Count a published message, and how long it took since ``started`` (``time.perf_counter``); tell the host."""
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        (self._received if source == "member" else self.metrics.received.labels(source)).inc()
        self.hooks.published(message)

    async def typing(self, room: str, member: Member) -> None:
        """Tell the room's other members that ``member`` is typing."""
        await self.backend.signal(Signal("typing", room, member))

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Whether the app can serve, and the figures ``/healthz`` shows."""
        try:
            await self.start()
            healthy = await self.backend.healthy()
        except Unavailable:
            healthy = False
        self._backend_state(healthy)
        return healthy, {
            "status": "ok" if healthy else "degraded",
            "backend": self.backend_name,
            "store": self.store_name,
            "connections": self.registry.connections,
            "rooms": self.registry.room_count,
        }

    def _backend_state(self, up: bool) -> None:
        """Log a change of the backend's state and show it in the metrics."""
        self.metrics.backend_up.set(1 if up else 0)
        if up != self._backend_up:
            previous, self._backend_up = self._backend_up, up
            if previous is not None or not up:
                log = logger.info if up else logger.warning
                log("%s", fields(event="backend", state="up" if up else "down", backend=self.backend.name))


def chat_of(scope: Scope) -> Chat:
    """The ``Chat`` of the app serving this scope (``create_app`` puts it in ``app.state.chat``)."""
    chat = getattr(scope["app"].state, "chat", None)
    if not isinstance(chat, Chat):
        raise RuntimeError("ChatEndpoint needs app.state.chat: build the app with chat.create_app()")
    return chat
