"""A room's events on their way to the application: a bounded buffer that ends, or fails, once closed."""

from __future__ import annotations

import asyncio
from collections import deque

from .events import RoomEvent
from .exceptions import ClientError


class EventStream:
    """Events in order; ``put`` waits while ``maxsize`` are unread, so a reader that stops stops the socket too
    (the server then closes it as a slow consumer, and the rejoin recovers what followed)."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[RoomEvent] = deque()
        self._maxsize = maxsize
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False
        self._error: ClientError | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, event: RoomEvent) -> None:
        """Add an event, once there is room for it (dropped if the stream closed meanwhile)."""
        while len(self._items) >= self._maxsize and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return
        self._items.append(event)
        self._readable.set()

    def close(self, error: ClientError | None = None) -> None:
        """No more events: the reader gets those buffered, then the end (or ``error``)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._readable.set()
        self._writable.set()

    async def get(self) -> RoomEvent:
        """The next event; ``StopAsyncIteration`` (or the error it closed with) after the last."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        event = self._items.popleft()
        self._writable.set()
        return event
