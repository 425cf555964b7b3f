"""Lighter stand-ins for two of uvicorn's per-connection objects (memory per idle connection).

``ChatWebSocketProtocol`` swaps them in for its ``queue`` (an ``asyncio.Queue``) and its
``writable`` (an ``asyncio.Event``); they offer exactly the methods uvicorn calls on those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Inbox:
    """The app's receive queue: one consumer, no put waiters; a fraction of an ``asyncio.Queue``'s memory.

    ``drained``, when set, is called as the consumer takes the last item (the protocol resumes reading
    there, so that its ``receive`` needs no coroutine of its own).
    """

    __slots__ = ("_items", "_waiter", "drained")

    def __init__(self) -> None:
        self._items: list[Any] | None = None  # none while empty: an idle connection holds no list
        self._waiter: asyncio.Future[None] | None = None
        self.drained: Callable[[], None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.pop(0)
        if not self._items:
            self._items = None
            if self.drained is not None:
                self.drained()
        return item


class Flag:
    """uvicorn's ``writable`` event without the cost of an ``asyncio.Event`` per connection."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
