"""Hooks for the end-to-end hook tests, loaded by the server with ``--hooks tests.e2e.hooked:Hooks``.

Each decision has a way to allow, refuse, change, raise and hang, chosen by its input; the events
are written to the server's log, where the test reads them.
"""

from __future__ import annotations

import logging

import anyio
from starlette.websockets import WebSocket

import chat
from chat.protocol import Member, Message

logger = logging.getLogger("chat")


async def hang() -> None:
    await anyio.Event().wait()


class Hooks:
    async def authenticate(self, websocket: WebSocket) -> chat.Identity | None:
        key = websocket.headers.get("x-api-key", "")
        if key == "boom":
            raise RuntimeError("key store down")
        if key == "hang":
            await hang()
        if key.startswith("key-"):
            name = key.removeprefix("key-")
            return chat.Identity("u-" + name, name.title())
        return None

    async def can_join(self, identity: chat.Identity, room: str) -> bool:
        if room.startswith("vip-"):
            raise chat.Refuse("members only")
        if room == "flaky":
            raise RuntimeError("room table down")
        if room == "slow":
            await hang()
        return room != "staff"

    async def on_message(self, identity: chat.Identity, room: str, text: str) -> str | None:
        if text == "boom":
            raise RuntimeError("filter down")
        if text == "hang":
            await hang()
        if text == "spam":
            return None
        return text.replace("heck", "h**k")

    def joined(self, member: Member, room: str) -> None:
        logger.info("hook-event joined member=%s room=%s", member.id, room)

    async def left(self, member: Member, room: str) -> None:
        logger.info("hook-event left member=%s room=%s", member.id, room)

    def published(self, message: Message) -> None:
        logger.info("hook-event published member=%s room=%s seq=%d", message.sender.id, message.room, message.seq)
