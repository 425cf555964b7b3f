"""Hooks for a host app: who connects, who may join, what may be said, and what happened.

Three decisions run in the connection's own flow, each bounded by ``hook_timeout``:

- ``authenticate(websocket) -> Identity | None``: who the handshake's user is (a session cookie, an
  API key...). ``None`` refuses with 403, unless token auth is on too: then a valid token still lets
  the client in (a host's browsers by session, its bots by token).
- ``can_join(identity, room) -> bool``: whether the member may enter the room.
- ``on_message(identity, room, text) -> str | None``: the text to publish (possibly changed), or
  ``None`` to refuse the message.

Three events run after the fact, in the order they happened, on a task of their own, so they never
hold up delivery: ``joined(member, room)`` (the member's first connection in the room, on this
process), ``left(member, room)`` (its last), ``published(message)`` (a message this process
published, with its seq; once per message across a cluster).

A hook may be a function or a coroutine function. A decision refuses with ``False``/``None``, or by
raising ``chat.Refuse(detail)`` to tell the member why. A hook that raises anything else, or takes
longer than ``hook_timeout``, has failed: the member gets ``unavailable`` (a 503 for a handshake),
everyone else carries on, and the failure is logged once, naming the hook.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import anyio
from starlette.websockets import WebSocket

from chat.auth import Identity, InvalidToken, valid_identity
from chat.exceptions import ConfigError, HookFailed, Refuse
from chat.logs import Throttle
from chat.logs import fields as log_fields
from chat.protocol import Member, Message

if TYPE_CHECKING:
    from chat.metrics import Metrics

logger = logging.getLogger("chat")

T = TypeVar("T")
Maybe: TypeAlias = Awaitable[T] | T
"""What a hook returns: the value, or an awaitable of it (a coroutine function's)."""

Authenticate = Callable[[WebSocket], Maybe[Identity | None]]
CanJoin = Callable[[Identity, str], Maybe[bool]]
OnMessage = Callable[[Identity, str, str], Maybe[str | None]]
RoomEvent = Callable[[Member, str], Maybe[None]]
Published = Callable[[Message], Maybe[None]]

EVENT_BACKLOG = 10000
"""Events waiting for the host's event hooks, at most; beyond that they are dropped and counted."""
FAILURE_LOG_RATE = 10.0
"""Failure lines per second at most, so that a hook failing on every message cannot flood the log."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """The host's hooks, each optional; ``Hooks.of(obj)`` takes them from any object's attributes of these names."""

    authenticate: Authenticate | None = None
    can_join: CanJoin | None = None
    on_message: OnMessage | None = None
    joined: RoomEvent | None = None
    left: RoomEvent | None = None
    published: Published | None = None

    @classmethod
    def of(cls, hooks: object) -> Hooks:
        """``hooks`` itself if it is a Hooks; else its methods or attributes named like the hooks (None: no hooks)."""
        if isinstance(hooks, Hooks):
            return hooks
        found = {field.name: getattr(hooks, field.name, None) for field in fields(cls)}
        for name, hook in found.items():
            if hook is not None and not callable(hook):
                raise TypeError(f"hook {name} must be callable, got {type(hook).__name__}")
        return cls(**found)


class HookRunner:
    """Calls one app's hooks: decisions bounded in time, events in order on one task, failures logged and counted."""

    def __init__(self, hooks: Hooks, timeout: float, metrics: Metrics) -> None:
        self.hooks = hooks
        self.timeout = timeout
        self.metrics = metrics
        self.authenticates = hooks.authenticate is not None
        self.checks_joins = hooks.can_join is not None
        self.decides = self.checks_joins or hooks.on_message is not None
        """Whether a decision needs the member's identity (a guest's is made for it)."""
        self.watches_rooms = hooks.joined is not None or hooks.left is not None
        self._events: asyncio.Queue[tuple[str, Callable[..., Maybe[None]], tuple[Any, ...]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._log = Throttle(FAILURE_LOG_RATE)
        self._stopped = False

    async def authenticate(self, websocket: WebSocket) -> Identity | None:
        """Who the host says the handshake's user is, checked like a token's claims; None: nobody it knows."""
        hook = self.hooks.authenticate
        assert hook is not None, "only called when there is one"
        identity = await self._decide("authenticate", hook, websocket)
        if identity is None:
            return None
        if not isinstance(identity, Identity):
            raise self._failed("authenticate", f"returned {type(identity).__name__}, not an Identity")
        try:
            return valid_identity(identity)
        except InvalidToken as exc:
            raise self._failed("authenticate", f"returned an unusable Identity: {exc.detail}") from None

    async def can_join(self, identity: Identity, room: str) -> None:
        """Return if the host lets the member into the room; raise Refuse (or HookFailed) if not."""
        hook = self.hooks.can_join
        if hook is None:
            return
        if not await self._decide("can_join", hook, identity, room):
            raise Refuse(f"you may not join room {room!r}")

    async def on_message(self, identity: Identity, room: str, text: str, max_text: int) -> str:
        """The text to publish; raise Refuse (or HookFailed) when the host refuses the message."""
        hook = self.hooks.on_message
        if hook is None:
            return text
        result = await self._decide("on_message", hook, identity, room, text)
        if result is None:
            raise Refuse("message refused")
        if not isinstance(result, str) or not result or len(result) > max_text:
            problem = "not a string" if not isinstance(result, str) else f"{len(result)} characters"
            raise self._failed("on_message", f"returned {problem}: it must return 1-{max_text} characters or None")
        return result

    def restart(self) -> None:
        """Take events again (the app started again after ``stop``)."""
        self._stopped = False

    def joined(self, member: Member, room: str) -> None:
        if self.hooks.joined is not None:
            self._queue("joined", self.hooks.joined, (member, room))

    def left(self, member: Member, room: str) -> None:
        if self.hooks.left is not None:
            self._queue("left", self.hooks.left, (member, room))

    def published(self, message: Message) -> None:
        if self.hooks.published is not None:
            self._queue("published", self.hooks.published, (message,))

    async def stop(self) -> None:
        """Give the events waiting a last ``timeout`` to run, then stop the task that runs them."""
        worker, events = self._worker, self._events
        self._worker = self._events = None
        self._stopped = True  # an event after this (a connection closing late) has no task left to run it
        if worker is None or events is None or worker.done():
            return
        if worker.get_loop() is asyncio.get_running_loop():
            with anyio.move_on_after(self.timeout):
                await events.join()
        worker.cancel()
        if worker.get_loop() is asyncio.get_running_loop():
            with anyio.CancelScope(shield=True):
                await asyncio.wait([worker])

    async def _decide(self, name: str, hook: Callable[..., Any], *args: Any) -> Any:
        """The hook's answer within ``timeout``; Refuse passes through, anything else is a HookFailed.

        Only an awaitable answer can be timed: a plain function has returned by the time it could be.
        """
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                deadline = asyncio.timeout(self.timeout)  # ~1 us: a third of what an anyio cancel scope costs
                try:
                    async with deadline:
                        result = await result
                except TimeoutError:
                    if deadline.expired():
                        raise self._failed(name, f"took longer than hook_timeout ({self.timeout:g} s)") from None
                    raise  # the hook's own
        except (Refuse, HookFailed):
            raise
        except Exception as exc:
            raise self._failed(name, exc) from None
        return result

    def _failed(self, name: str, error: Exception | str) -> HookFailed:
        """Count and log a hook's failure (once, naming it: with its traceback when it raised, else what was wrong);
        the HookFailed to answer the member with."""
        self.metrics.hook_failures.labels(name).inc()
        unlogged = self._log.allow(time.monotonic())
        if unlogged is not None:
            detail = error if isinstance(error, str) else None
            line = log_fields(event="hook_failed", hook=name, detail=detail, unlogged=unlogged or None)
            logger.error("%s", line, exc_info=None if isinstance(error, str) else error)
        return HookFailed(name)

    def _queue(self, name: str, hook: Callable[..., Maybe[None]], args: tuple[Any, ...]) -> None:
        """Hand an event to the events task (started on first use, on the running loop)."""
        if self._stopped:
            self.metrics.hook_events_dropped.inc()
            return
        loop = asyncio.get_running_loop()
        if self._worker is None or self._events is None or self._worker.get_loop() is not loop:
            self._events = asyncio.Queue(EVENT_BACKLOG)
            self._worker = loop.create_task(self._run_events(self._events), name="chat-hook-events")
        try:
            self._events.put_nowait((name, hook, args))
        except asyncio.QueueFull:
            self.metrics.hook_events_dropped.inc()

    async def _run_events(self, events: asyncio.Queue[tuple[str, Callable[..., Maybe[None]], tuple[Any, ...]]]) -> None:
        """Run the events one by one, in order; a failing one is logged and the next runs."""
        while True:
            name, hook, args = await events.get()
            try:
                await self._decide(name, hook, *args)
            except (HookFailed, Refuse):
                pass
            finally:
                events.task_done()


def load_hooks(path: str) -> object:
    """The hooks ``module:attribute`` names (a class is instantiated); None for ""; raises ConfigError."""
    if not path:
        return None
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"hooks must be module:attribute (myapp.chat_hooks:Hooks), got {path!r}")
    try:
        hooks = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"hooks {path!r} cannot be loaded: {exc}") from None
    try:
        return Hooks.of(hooks() if isinstance(hooks, type) else hooks)
    except TypeError as exc:
        raise ConfigError(f"hooks {path!r}: {exc}") from None


def guest_identity(member_id: str, name: str) -> Identity:
    """The identity the decision hooks see for a member nobody authenticated (auth off)."""
    return Identity(member_id, name, math.inf)
