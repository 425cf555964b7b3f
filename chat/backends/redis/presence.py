"""Presence: who is in a room, on every process.

A room's presence key holds each member's JSON with its expiry on Redis's clock. Every process
refreshes the entries of its own members (and its rooms' keys, unless a store keeps the rooms) every
third of ``presence_ttl``; the same heartbeat drops the entries nobody refreshed (their process died
without leaving) and announces them as left.

A heartbeat only refreshes entries that are there, so that it never brings back a member whose
leave overtook it. With a store, Redis coming back empty closes nobody, so each time the pub/sub
link is up again ``rejoin`` adds this process's members back, without announcing them: to the other
members nobody left.
"""

from __future__ import annotations

import logging

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chat.backends.redis.errors import unavailable
from chat.backends.redis.scripts import (
    HEARTBEAT,
    JOIN,
    LEAVE,
    MEMBERS,
    key_ttl,
    leave_frame_parts,
    room_channel,
    room_keys,
)
from chat.protocol import Member, Signal
from chat.settings import Settings

logger = logging.getLogger("chat.redis")


class Presence:
    """Joins, leaves and member lists; ``run_forever`` is the heartbeat of this process's members."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._join = redis.register_script(JOIN)
        self._leave = redis.register_script(LEAVE)
        self._members = redis.register_script(MEMBERS)
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._local: dict[str, dict[str, str]] = {}  # room -> member id -> presence entry
        self._presence_ms = int(settings.presence_ttl * 1000)
        self._ttl = key_ttl(settings)
        self._interval = max(0.2, settings.presence_ttl / 3)
        self._room_keys = True  # the heartbeat keeps the rooms' seq and history alive too

    def record_elsewhere(self) -> None:
        """A store keeps the rooms: heartbeats keep only presence alive."""
        self._room_keys = False

    async def rejoin(self) -> None:
        """Add this process's members back, in one round trip, without telling anyone (Redis may have lost them)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, local in list(self._local.items()):
                keys, args = self._heartbeat_of(room, local, "")
                await self._heartbeat(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def join(self, room: str, member: Member) -> None:
        """Add the member to the room's presence and announce it."""
        entry, presence_ms, channel, frame = self.join_args(room, member)
        with unavailable():
            await self._join(keys=[room_keys(room)[3]], args=[entry, presence_ms, self._ttl, channel, frame])
        self.joined(room, member)

    def join_args(self, room: str, member: Member) -> tuple[str, int, str, str]:
        """What a script that adds the member needs: its entry, the presence TTL (ms), the channel, the join frame."""
        return member.json, self._presence_ms, room_channel(room), Signal("join", room, member).frame

    def joined(self, room: str, member: Member) -> None:
        """The member was added (by ``join`` or a script given ``join_args``): the heartbeat keeps it present."""
        self._local.setdefault(room, {})[member.id] = member.json  # a presence entry is the member's JSON

    async def leave(self, room: str, member: Member) -> None:
        """Remove the member from the room's presence and announce it, if it was there."""
        local = self._local.get(room, {})
        entry = local.pop(member.id, None) or member.json
        if not local:
            self._local.pop(room, None)
        frame = Signal("leave", room, member).frame
        with unavailable():
            await self._leave(keys=[room_keys(room)[3]], args=[entry, room_channel(room), frame])

    async def members(self, room: str) -> list[Member]:
        """Everyone present in the room, on every process."""
        with unavailable():
            entries = await self._members(keys=[room_keys(room)[3]])
        return [Member.from_json(entry) for entry in entries]

    async def run_forever(self) -> None:
        """Keep this node's members present and its rooms alive; reap members of dead nodes."""
        while True:
            await anyio.sleep(self._interval)
            for room, local in list(self._local.items()):
                keys, args = self._heartbeat_of(room, local, "XX")
                try:
                    await self._heartbeat(keys=keys, args=args)
                except (RedisError, OSError) as exc:
                    logger.debug("heartbeat of %s skipped: %s", room, exc)
                    break

    def _heartbeat_of(self, room: str, local: dict[str, str], mode: str) -> tuple[list[str], list[str | int]]:
        """The heartbeat script's KEYS and ARGV for a room's local members (``mode`` 'XX': refresh only)."""
        epoch_key, seq_key, history_key, presence_key = room_keys(room)
        keys = [presence_key, epoch_key, seq_key, history_key] if self._room_keys else [presence_key]
        args: list[str | int] = [self._presence_ms, self._ttl, room_channel(room), *leave_frame_parts(room), mode]
        args.extend(local.values())
        return keys, args
