"""Filling a durable store fast, before a server opens it: through the store class itself, many appends per loop turn.

The server must not be running (a SQLite file is held by one process). Messages go room after
room (``room_counts``: as even as the numbers allow); each batch of appends is made in one
event-loop turn and awaited together, so the store commits it in few transactions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from chat.protocol import Member
from chat.settings import Settings
from chat.stores import open_store

BATCH = 5000
TEXT_SIZE = 100
SENDER_ID = "filler"


@dataclass(frozen=True)
class Filled:
    """What a fill stored, and how fast."""

    rooms: list[str]
    counts: list[int]
    """Messages per room (so each room's last seq), in the order of ``rooms``."""
    seconds: float

    @property
    def messages(self) -> int:
        return sum(self.counts)

    @property
    def per_second(self) -> float:
        return self.messages / max(self.seconds, 1e-9)


def room_name(index: int) -> str:
    return f"stored{index}"


def room_counts(messages: int, rooms: int) -> list[int]:
    """``messages`` spread over ``rooms`` as evenly as possible; the first rooms take the remainder."""
    share, extra = divmod(messages, rooms)
    return [share + (1 if index < extra else 0) for index in range(rooms)]


def batches(counts: list[int], size: int) -> Iterator[list[str]]:
    """The room of each message, room after room, in lists of at most ``size``."""
    batch: list[str] = []
    for index, count in enumerate(counts):
        name = room_name(index)
        for _ in range(count):
            batch.append(name)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def text(number: int) -> str:
    """A stored text of ``TEXT_SIZE`` characters, numbered."""
    return f"stored message {number:012d} ".ljust(TEXT_SIZE, "x")


async def fill_store(url: str, messages: int, rooms: int, batch: int = BATCH) -> Filled:
    """Append ``messages`` to the store at ``url``, spread over ``rooms``; it is stopped afterwards."""
    sender = Member(SENDER_ID, "filler")
    counts = room_counts(messages, rooms)
    store = open_store(url, Settings(store=url))
    started = time.monotonic()
    await store.start(lambda message, epoch: None)
    try:
        number = 0
        for names in batches(counts, batch):
            futures = []
            for name in names:
                number += 1
                futures.append(store.append(name, sender, text(number)))
            await asyncio.gather(*futures)
    finally:
        await store.stop()
    return Filled([room_name(index) for index in range(rooms)], counts, time.monotonic() - started)


def fill(url: str, messages: int, rooms: int, batch: int = BATCH) -> Filled:
    """``fill_store`` from synchronous code (the harness)."""
    return asyncio.run(fill_store(url, messages, rooms, batch))
