"""Scale-out on Redis: any number of processes, on any number of machines, serve the same rooms.

Keys of room R (the ``{R}`` hash tag keeps them in one cluster slot), all expiring after
``history_ttl`` seconds without activity:

    chat:{R}:epoch     the room's epoch; a new one whenever the room's sequence (re)starts
    chat:{R}:seq       the latest seq
    chat:{R}:history   the latest ``history_size`` message frames, oldest first
    chat:{R}:presence  sorted set: member entry -> expiry (ms), kept alive by heartbeats

Channel ``chat:{R}`` carries ``m:<epoch>:<message frame>``, ``s:<join/leave/typing frame>`` and
``r:<member id>`` (the operator removes that member: every process closes its connections).

Publishing is one Lua script: next seq, append to the capped history, publish. The publishes
started in one event-loop turn leave in one write, without waiting for the replies to earlier ones;
Redis answers a connection's commands in order, so seqs follow the order publishes were started,
and their pub/sub messages come back together, so every member gets them in one write.

Each process has one pub/sub connection for every room with local members. A seq gap (a dropped
link, a node that fell behind) is filled from history before anything newer is delivered; a changed
epoch (Redis came back empty) closes the room's members with 1012 so that they rejoin and learn it.
Heartbeats keep each process's members present and drop those of a process that died.

With a store (``StoredBackend``, ``record_in``), the store gives seqs, epoch and history, and Redis
keeps only presence: each committed message is relayed as a plain ``PUBLISH`` of the same
``m:<epoch>:<frame>``, and the listener reads positions and gaps from the store. A relay Redis did
not carry, or one overtaken by a later seq from another process, is one more gap to fill; Redis
coming back empty loses nothing (the store's epoch is unchanged) and each process adds its members'
presence back.

    scripts    the Lua scripts, key names and channel names
    publisher  the publish path, on ``link`` (a lean RESP connection) or on redis-py pipelines
    relay      the relay path of a store's messages, on ``link`` or on redis-py pipelines
    listener   the pub/sub connection, catch-up and reconnection
    presence   join, leave, member lists and the heartbeat
    errors     ``unavailable()``: Redis failing, as callers see it (``Unavailable``)
    backend    ``RedisBackend``, which puts them together
"""

from __future__ import annotations

from chat.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
