"""An asyncio client for the chat server: many rooms over one connection where the server offers ``/ws``
(protocol v1.1), one connection per room (v1) otherwise; it reconnects by itself and recovers what it missed.

    async with chat.client.connect("ws://127.0.0.1:8000", name="ann") as client:
        room = await client.join("lobby")
        seq = await room.send("hi")
        async for event in room:
            ...

The layers: ``events`` (what the application receives), ``state`` and ``backoff`` (the decisions, pure),
``links`` (the sockets), ``client`` (the API), ``__main__`` (a terminal chat).
"""

from __future__ import annotations

from .client import Client, Room, connect
from .events import Join, Leave, Member, Message, Rejoined, Removed, RoomEvent, Typing
from .exceptions import ClientError, MessageTooLarge, OutboxFull, Refused, RoomClosed, ServerError

__all__ = [
    "Client",
    "ClientError",
    "Join",
    "Leave",
    "Member",
    "Message",
    "MessageTooLarge",
    "OutboxFull",
    "Refused",
    "Rejoined",
    "Removed",
    "Room",
    "RoomClosed",
    "RoomEvent",
    "ServerError",
    "Typing",
    "connect",
]
