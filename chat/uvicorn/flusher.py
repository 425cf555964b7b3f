"""One flush per event-loop turn (or per write delay) for every socket written to directly."""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Flushable(Protocol):
    """A socket whose frames of this turn wait for one write (``ChatWebSocketProtocol``)."""

    loop: asyncio.AbstractEventLoop

    def flush(self) -> None:
        """Write what waits, in one write."""


class Flusher:
    """Flushes every socket written to in this event-loop turn (or within ``delay`` seconds of the first write).

    One callback per turn (or per delay), not one per socket.
    """

    __slots__ = ("_dirty", "_scheduled", "delay")  # no reference to the loop: it keys the flusher weakly

    def __init__(self, delay: float = 0.0) -> None:
        self._dirty: list[Flushable] = []
        self._scheduled = False
        self.delay = delay

    def add(self, protocol: Flushable) -> None:
        self._dirty.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            if self.delay:
                protocol.loop.call_later(self.delay, self._run)
            else:
                protocol.loop.call_soon(self._run)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for protocol in dirty:
            protocol.flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Flusher]] = weakref.WeakKeyDictionary()


def flusher_for(loop: asyncio.AbstractEventLoop, delay: float = 0.0) -> Flusher:
    """The loop's flusher for this write delay (one per serving loop and delay; gone with the loop)."""
    by_delay = _flushers.get(loop)
    if by_delay is None:
        by_delay = _flushers[loop] = {}
    flusher = by_delay.get(delay)
    if flusher is None:
        flusher = by_delay[delay] = Flusher(delay)
    return flusher
