"""The Redis side of the layout (see the package docstring): Lua scripts, key names, channel names.

Each script's KEYS and ARGV are written above it; a script runs atomically, so a room's seq,
history and presence change in one step whichever process runs it.
"""

from __future__ import annotations

import secrets

from chat.protocol import Member, Signal
from chat.settings import Settings

CONTROL_CHANNEL = "chat:_control"
"""Subscribed first and never published to: its confirmation says the pub/sub link is up."""


def room_keys(room: str) -> tuple[str, str, str, str]:
    """epoch, seq, history and presence keys of a room."""
    base = "chat:{" + room + "}:"
    return base + "epoch", base + "seq", base + "history", base + "presence"


EVERY_EPOCH_KEY = "chat:{*}:epoch"
"""A SCAN pattern for every room Redis keeps (each has an epoch key)."""

EVERY_PRESENCE_KEY = "chat:{*}:presence"
"""A SCAN pattern for every room with someone present (with a store, Redis keeps nothing else of a room)."""


def room_channel(room: str) -> str:
    """The channel of a room's events."""
    return "chat:{" + room + "}"


def room_of(channel: str) -> str:
    """The room of a ``chat:{R}`` channel."""
    return channel[len("chat:{") : -1]


_NOBODY = Member("", "")  # a room's JSON never holds it (ROOM_PATTERN): it marks where the member goes


def leave_frame_parts(room: str) -> tuple[str, str]:
    """The room's leave frame (``Signal.frame``) before and after its member's JSON, for the heartbeat script."""
    head, _, tail = Signal("leave", room, _NOBODY).frame.partition(_NOBODY.json)
    return head, tail


def new_epoch() -> str:
    """A fresh epoch, for a room Redis does not know."""
    return secrets.token_urlsafe(9)


def key_ttl(settings: Settings) -> int:
    """Seconds a room's keys live without activity (``history_ttl``; EXPIRE wants at least 1)."""
    return max(1, int(settings.history_ttl))


# Every script that reads or writes a room's sequence starts here (KEYS: epoch, seq, history;
# ARGV[1]: a fresh epoch, ARGV[2]: the keys' TTL): a room Redis does not know starts a new epoch.
# Each such script ends by refreshing the three keys' TTL (after INCR/RPUSH may have made them).
_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
"""
_REFRESH_TTL = """
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
"""

# ARGV[3..]: frame head, frame tail, history size, channel.
PUBLISH = (
    _ENSURE_EPOCH
    + """
local seq = redis.call('INCR', KEYS[2])
local frame = ARGV[3] .. seq .. ARGV[4]
redis.call('RPUSH', KEYS[3], frame)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[6], 'm:' .. epoch .. ':' .. frame)
"""
    + _REFRESH_TTL
    + """
return {seq, epoch}
"""
)

# ARGV[3..]: since (-1: none), the client's epoch, how many on a fresh join.
# Returns {seq, epoch, recovered (0/1), frames...}.
_READ_SNAPSHOT = """
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = redis.call('LLEN', KEYS[3])
local oldest = seq - length + 1
local since = tonumber(ARGV[3])
local result = {seq, epoch, 0}
local first = length - tonumber(ARGV[5])
if since >= 0 and ARGV[4] == epoch and since <= seq and since + 1 >= oldest then
  result[3] = 1
  first = since + 1 - oldest
end
if first < 0 then first = 0 end
if first < length then
  for _, frame in ipairs(redis.call('LRANGE', KEYS[3], first, -1)) do table.insert(result, frame) end
end
"""
SNAPSHOT = (
    _ENSURE_EPOCH
    + _READ_SNAPSHOT
    + _REFRESH_TTL
    + """
return result
"""
)

# KEYS: seq, history. ARGV: before (-1: latest), limit.
HISTORY = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local length = redis.call('LLEN', KEYS[2])
local oldest = seq - length + 1
local stop = length
local before = tonumber(ARGV[1])
if before >= 0 then stop = math.max(0, math.min(length, before - oldest)) end
local start = math.max(0, stop - tonumber(ARGV[2]))
if stop <= start then return {} end
return redis.call('LRANGE', KEYS[2], start, stop - 1)
"""

# Redis's clock in ms as ``ms``: presence expiries are on it, whichever process writes or reads them.
_NOW_MS = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# A member's first join of a room on this process, in one round trip: JOIN, then SNAPSHOT.
# KEYS: epoch, seq, history, presence. ARGV[1..5]: SNAPSHOT's; ARGV[6..]: entry, presence ttl ms, channel, join
# frame. Returns what SNAPSHOT returns.
ENTER = (
    _NOW_MS
    + _ENSURE_EPOCH
    + """
redis.call('ZADD', KEYS[4], ms + tonumber(ARGV[7]), ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('PUBLISH', ARGV[8], 's:' .. ARGV[9])
"""
    + _READ_SNAPSHOT
    + _REFRESH_TTL
    + """
return result
"""
)

# KEYS: presence. ARGV: entry, presence ttl ms, key ttl s, channel, join frame.
JOIN = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 's:' .. ARGV[5])
"""
)

# KEYS: presence. ARGV: entry, channel, leave frame.
LEAVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 's:' .. ARGV[3])
end
"""

# KEYS: presence, then the keys to keep alive with it (epoch, seq, history; none with a store).
# ARGV: presence ttl ms, key ttl s, channel, the room's leave frame before and after its member
# (``leave_frame_parts``), 'XX' (refresh entries that are there) or '' (add them back), entries...
# Refreshes this node's members, drops everyone whose heartbeat stopped and announces them.
HEARTBEAT = (
    _NOW_MS
    + """
for i = 7, #ARGV do
  if ARGV[6] == 'XX' then
    redis.call('ZADD', KEYS[1], 'XX', ms + tonumber(ARGV[1]), ARGV[i])
  else
    redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[1]), ARGV[i])
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
for _, entry in ipairs(expired) do
  if redis.call('ZREM', KEYS[1], entry) == 1 then
    redis.call('PUBLISH', ARGV[3], 's:' .. ARGV[4] .. entry .. ARGV[5])
  end
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return #expired
"""
)

# KEYS: presence. Returns the live entries.
MEMBERS = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')
"""
)
