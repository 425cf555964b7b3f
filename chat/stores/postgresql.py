"""The PostgreSQL store (``postgresql://USER:PASSWORD@HOST:PORT/DB``): the record shared by every process.

Every process serving the rooms opens the same database. A room's seq lives in its ``chat_rooms``
row; a batch of appends is one statement (so one transaction, one round trip): it adds each room's
count to its row (rows taken in room order, held until the commit), inserts the messages under the
seqs that makes, and prunes what retention by count pushed out. A process that commits seq N of a
room therefore knows every lower seq of that room is committed already, whichever process wrote it.

One batch is in flight per process; the appends started while it is on its way make the next one.

Tables (schema version ``SCHEMA_VERSION``, kept in ``chat_meta`` with the database's epoch):
``chat_meta(key, value)``, ``chat_rooms(room, seq)``, ``chat_messages(room, seq, sender_id,
sender_name, text, ts)`` keyed by (room, seq). ``text`` is bytea: a message may hold NUL, which
PostgreSQL's text cannot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from chat.backends.base import PublishDone, Snapshot
from chat.exceptions import ConfigError, Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings
from chat.stores.base import SCHEMA_VERSION, UNAVAILABLE, Append, Committed, Store, room_epoch

logger = logging.getLogger("chat.postgresql")

CONNECT_TIMEOUT = 5.0
QUEUE_TIMEOUT = 30.0
"""Seconds a read or a batch may wait for a free connection of its pool: a join storm queues there, and a
queue is not PostgreSQL failing (a connection PostgreSQL refuses or leaves unanswered fails within CONNECT_TIMEOUT)."""
COMMAND_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0  # a batch, from taking a connection to its commit
HEALTH_TIMEOUT = 2.0
STOP_TIMEOUT = 10.0  # what is on its way when the store stops gets this long to commit
MAX_BATCH = 2000  # appends per statement; more wait for the next
PRUNE_INTERVAL = 30.0
PRUNE_CHUNK = 1000  # rows one pruning statement deletes at most
SCHEMA_LOCK = 0x63686174  # the advisory lock that orders processes creating the schema at once
NO_SEQ = 2**62  # above every seq: "before nothing"
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)  # OSError includes TimeoutError

CREATE_SCHEMA = """
CREATE TABLE chat_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE chat_rooms (room text COLLATE "C" PRIMARY KEY, seq bigint NOT NULL);
CREATE TABLE chat_messages (
    room text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    sender_id text NOT NULL,
    sender_name text NOT NULL,
    text bytea NOT NULL,
    ts bigint NOT NULL,
    PRIMARY KEY (room, seq)
);
"""

MIGRATIONS: dict[int, str] = {}
"""SQL that brings a database of schema version ``key - 1`` to ``key`` (none yet: version 1 is the first)."""

# $1-$5: each append's room, sender id, sender name, text, ts (in append order); $6: retention by count (0: off).
APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[])
        WITH ORDINALITY AS b(room, sender_id, sender_name, text, ts, position)
), counts AS (
    SELECT room, count(*) AS n FROM batch GROUP BY room
), tops AS (
    INSERT INTO chat_rooms AS r (room, seq) SELECT room, n FROM counts ORDER BY room
    ON CONFLICT (room) DO UPDATE SET seq = r.seq + EXCLUDED.seq
    RETURNING r.room, r.seq
), numbered AS (
    SELECT b.*, t.seq AS top, t.seq - c.n + row_number() OVER (PARTITION BY b.room ORDER BY b.position) AS seq
    FROM batch b JOIN tops t USING (room) JOIN counts c USING (room)
), inserted AS (
    INSERT INTO chat_messages (room, seq, sender_id, sender_name, text, ts)
    SELECT room, seq, sender_id, sender_name, text, ts FROM numbered WHERE $6 = 0 OR seq > top - $6
), pruned AS (
    DELETE FROM chat_messages m USING tops t, counts c
    WHERE $6 > 0 AND t.room = c.room AND m.room = t.room AND m.seq > t.seq - c.n - $6 AND m.seq <= t.seq - $6
)
SELECT room, seq FROM tops
"""

_COLUMNS = "m.seq, m.sender_id, m.sender_name, m.text, m.ts"
# A room's seq with its messages, read in one statement so both come from the same commit.
AFTER = f"""
SELECT r.seq AS top, {_COLUMNS} FROM chat_rooms r LEFT JOIN LATERAL (
    SELECT * FROM chat_messages WHERE room = r.room AND seq > $2 ORDER BY seq LIMIT $3
) m ON true WHERE r.room = $1
"""
LATEST = f"""
SELECT r.seq AS top, {_COLUMNS} FROM chat_rooms r LEFT JOIN LATERAL (
    SELECT * FROM chat_messages WHERE room = r.room ORDER BY seq DESC LIMIT $2
) m ON true WHERE r.room = $1
"""
HISTORY = f"SELECT {_COLUMNS} FROM chat_messages m WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
ROOMS = "SELECT room FROM chat_rooms r WHERE EXISTS (SELECT 1 FROM chat_messages m WHERE m.room = r.room) ORDER BY room"
EXISTS = "SELECT EXISTS (SELECT 1 FROM chat_messages WHERE room = $1)"
# The oldest of a room's messages that retention gave up, at most $4 of them, and never one after a kept one:
# those before the first of the room's oldest $4 younger than $2 (ms), and those more than $3 (0: off) behind its seq.
PRUNE = """
DELETE FROM chat_messages WHERE room = $1 AND seq < (
    SELECT least(
        max(seq) + 1,
        greatest(
            coalesce(min(seq) FILTER (WHERE ts >= $2), max(seq) + 1),
            CASE WHEN $3 > 0 THEN (SELECT seq FROM chat_rooms WHERE room = $1) - $3 + 1 ELSE 0 END
        )
    )
    FROM (SELECT seq, ts FROM chat_messages WHERE room = $1 ORDER BY seq LIMIT $4) head
)
"""


def _now_ms() -> int:
    """Milliseconds since the epoch: a message's ``ts``."""
    return time.time_ns() // 1_000_000


def _redacted(url: str) -> str:
    """The URL without its password, as it may appear in a log or an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _one_line(exc: BaseException) -> str:
    """What went wrong, on one line."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    return " ".join(str(exc).split()) or type(exc).__name__


def _message(room: str, row: asyncpg.Record) -> Message:
    return Message(room, row["seq"], Member(row["sender_id"], row["sender_name"]), row["text"].decode(), row["ts"])


class PostgresStore(Store):
    """Appends committed in batches by one writer; reads on connections of their own."""

    name: ClassVar[str] = "postgresql"

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(url, settings)
        self.epoch = ""
        self._committed: Committed | None = None
        self._queued: list[Append] = []
        self._wanted = asyncio.Event()  # something was queued
        self._closed = True
        self._writes: asyncpg.Pool | None = None
        self._reads: asyncpg.Pool | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._up = True

    # --- opening and closing ----------------------------------------------------------------

    async def start(self, committed: Committed) -> None:
        try:
            connection = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
        except (*FAILURES, ValueError) as exc:
            raise ConfigError(f"cannot open the PostgreSQL store {_redacted(self.url)}: {_one_line(exc)}") from None
        try:
            self.epoch = await self._prepare_schema(connection)
        except FAILURES as exc:
            raise ConfigError(f"cannot use the PostgreSQL store {_redacted(self.url)}: {_one_line(exc)}") from None
        finally:
            await connection.close()
        try:
            self._writes = await self._pool(1)
            self._reads = await self._pool(3)
        except FAILURES as exc:
            await self._close_pools()
            raise ConfigError(f"cannot open the PostgreSQL store {_redacted(self.url)}: {_one_line(exc)}") from None
        self._committed = committed
        self._closed = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_queued(), name="chat-postgresql-writer")
        if self.settings.retention_seconds > 0 or self.settings.retention_messages > 0:
            self._pruner = loop.create_task(self._prune_periodically(), name="chat-postgresql-pruner")

    async def _prepare_schema(self, connection: asyncpg.Connection) -> str:
        """Create the schema if there is none, migrate an older one, refuse a newer one; return the epoch."""
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            if not await connection.fetchval("SELECT to_regclass('chat_meta') IS NOT NULL"):
                await connection.execute(CREATE_SCHEMA)
                await connection.executemany(
                    "INSERT INTO chat_meta (key, value) VALUES ($1, $2)",
                    [("schema_version", str(SCHEMA_VERSION)), ("epoch", secrets.token_urlsafe(9))],
                )
            meta: dict[str, str] = {
                row["key"]: row["value"] for row in await connection.fetch("SELECT key, value FROM chat_meta")
            }
            written, epoch = meta.get("schema_version", ""), meta.get("epoch", "")
            if not (written.isascii() and written.isdigit() and int(written) >= 1 and epoch):
                raise ConfigError(f"the PostgreSQL store {_redacted(self.url)} has a chat_meta table that is not ours")
            version = int(written)
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the PostgreSQL store {_redacted(self.url)} has schema version {version}, written by a newer "
                    f"release (this one knows up to {SCHEMA_VERSION}): upgrade, or use another database"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                await connection.execute(MIGRATIONS[step])
                await connection.execute("UPDATE chat_meta SET value = $1 WHERE key = 'schema_version'", str(step))
            return epoch

    async def _pool(self, size: int) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self.url,
            min_size=0,  # no reconnecting in the background (and its log lines) while PostgreSQL is down
            max_size=size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": "chat"},
        )

    async def stop(self) -> None:
        self._closed = True
        self._wanted.set()
        pruner, self._pruner = self._pruner, None
        if pruner is not None:
            pruner.cancel()
            with suppress(asyncio.CancelledError):
                await pruner
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.shield(writer)  # it commits what is queued, then ends
            except TimeoutError:
                writer.cancel()
                with suppress(asyncio.CancelledError):
                    await writer
        self._fail(self._take(len(self._queued)))
        await self._close_pools()

    async def _close_pools(self) -> None:
        pools = [pool for pool in (self._writes, self._reads) if pool is not None]
        self._writes = self._reads = None
        for pool in pools:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    # --- appending --------------------------------------------------------------------------

    def append(self, room: str, sender: Member, text: str, done: PublishDone | None = None) -> asyncio.Future[Message]:
        loop = asyncio.get_running_loop()
        pending = Append(room, sender, text, _now_ms(), loop.create_future(), done)
        if self._closed:
            loop.call_soon(pending.settle, Unavailable(UNAVAILABLE))
        else:
            self._queued.append(pending)
            self._wanted.set()
        return pending.future

    async def _write_queued(self) -> None:
        """Commit what is queued as one batch, then the next; end once the store is closed and nothing is left."""
        while True:
            await self._wanted.wait()  # set in an append: this runs a loop turn later, with that turn's appends
            self._wanted.clear()
            while self._queued:
                await self._commit(self._take(MAX_BATCH))
            if self._closed:
                return

    def _take(self, count: int) -> list[Append]:
        batch, self._queued = self._queued[:count], self._queued[count:]
        return batch

    async def _commit(self, batch: list[Append]) -> None:
        """Commit the batch; then, in order, tell ``committed`` and settle each append (or fail them all)."""
        try:
            tops = await self._insert(batch)
        except Unavailable:
            self._fail(batch)
            return
        except Exception:
            logger.exception("a batch of appends failed")
            self._fail(batch)
            return
        except BaseException:  # cancelled (the store stops): nobody may wait forever
            self._fail(batch)
            raise
        self._mark(up=True)
        assert self._committed is not None
        counts: dict[str, int] = {}
        for pending in batch:
            counts[pending.room] = counts.get(pending.room, 0) + 1
        seqs = {room: tops[room] - count for room, count in counts.items()}  # each room's seq before the batch
        for pending in batch:
            seq = seqs[pending.room] = seqs[pending.room] + 1
            message = Message(pending.room, seq, pending.sender, pending.text, pending.ts)
            try:
                self._committed(message, room_epoch(self.epoch, message.room))
            except Exception:
                logger.exception("the committed callback failed")
            pending.settle(message)

    async def _insert(self, batch: list[Append]) -> dict[str, int]:
        """Run the batch's statement (again after a deadlock); each room's seq after it."""
        columns: tuple[list[Any], ...] = ([], [], [], [], [])
        for pending in batch:
            for column, value in zip(
                columns,
                (pending.room, pending.sender.id, pending.sender.name, pending.text.encode(), pending.ts),
                strict=True,
            ):
                column.append(value)
        assert self._writes is not None
        for attempt in range(3):
            try:
                async with asyncio.timeout(WRITE_TIMEOUT), self._connection(self._writes) as connection:
                    rows = await connection.fetch(APPEND, *columns, self.settings.retention_messages)
                return {row["room"]: row["seq"] for row in rows}
            except Unavailable as exc:
                if not isinstance(exc.__cause__, asyncpg.TransactionRollbackError) or attempt == 2:
                    raise
            except TimeoutError as exc:
                self._mark(up=False, why=exc)
                raise Unavailable(UNAVAILABLE) from exc
        raise AssertionError("unreachable")

    def _fail(self, batch: Iterable[Append]) -> None:
        for pending in batch:
            pending.settle(Unavailable(UNAVAILABLE))

    # --- reading ----------------------------------------------------------------------------

    async def snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        async with self._connection(self._reads) as connection:
            if since is not None and epoch == room_epoch(self.epoch, room):
                most = max(self.settings.history_size, count)  # a member further behind starts afresh
                rows = await connection.fetch(AFTER, room, since, most)
                top = rows[0]["top"] if rows else 0
                missed = [_message(room, row) for row in rows if row["seq"] is not None]
                if since == top or (since < top <= since + most and missed and missed[0].seq == since + 1):
                    return Snapshot(top, room_epoch(self.epoch, room), missed, recovered=True)
            rows = await connection.fetch(LATEST, room, count)
        top = rows[0]["top"] if rows else 0
        latest = [_message(room, row) for row in reversed(rows) if row["seq"] is not None]
        return Snapshot(top, room_epoch(self.epoch, room), latest)

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        async with self._connection(self._reads) as connection:
            rows = await connection.fetch(HISTORY, room, NO_SEQ if before is None else before, limit)
        return [_message(room, row) for row in reversed(rows)]

    async def rooms(self) -> list[str]:
        async with self._connection(self._reads) as connection:
            return [row["room"] for row in await connection.fetch(ROOMS)]

    async def exists(self, room: str) -> bool:
        async with self._connection(self._reads) as connection:
            return bool(await connection.fetchval(EXISTS, room))

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT), self._connection(self._reads) as connection:
                await connection.fetchval("SELECT 1")
        except (Unavailable, TimeoutError):
            return False
        return True

    @asynccontextmanager
    async def _connection(self, pool: asyncpg.Pool | None) -> AsyncIterator[PoolConnectionProxy]:
        """A connection of the pool; PostgreSQL's failures become ``Unavailable``.

        A connection that failed other than by an error PostgreSQL reported (lost, timed out, cancelled)
        is closed, so the pool opens a new one instead of handing it out again.
        """
        if pool is None:
            raise Unavailable(UNAVAILABLE)
        try:
            connection = await pool.acquire(timeout=QUEUE_TIMEOUT)
        except FAILURES as exc:
            self._mark(up=False, why=exc)
            raise Unavailable(UNAVAILABLE) from exc
        try:
            yield connection
        except BaseException as exc:
            if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, asyncpg.PostgresConnectionError):
                connection.terminate()
                self._mark(up=False, why=exc)
            if isinstance(exc, FAILURES):
                raise Unavailable(UNAVAILABLE) from exc
            raise
        finally:
            try:
                await pool.release(connection, timeout=COMMAND_TIMEOUT)
            except FAILURES as exc:  # its reset failed: the pool closed it and opens another next time
                logger.debug("postgresql connection not reusable: %s", _one_line(exc))

    def _mark(self, up: bool, why: BaseException | None = None) -> None:
        """Log when the store goes down or comes back."""
        if up and not self._up:
            logger.info("postgresql store %s is back", _redacted(self.url))
        elif not up and self._up:
            logger.warning("postgresql store %s unavailable: %s", _redacted(self.url), why and _one_line(why))
        self._up = up

    # --- retention --------------------------------------------------------------------------

    async def _prune_periodically(self) -> None:
        """Delete what retention gave up, every ``PRUNE_INTERVAL`` seconds (not at start-up)."""
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            with suppress(Unavailable):  # logged by _mark; the next round tries again
                await self.prune()

    async def prune(self) -> int:
        """Delete the messages older than ``retention_seconds`` or beyond ``retention_messages``; how many."""
        seconds, keep = self.settings.retention_seconds, self.settings.retention_messages
        cutoff = _now_ms() - int(seconds * 1000) if seconds > 0 else -NO_SEQ
        deleted = 0
        async with self._connection(self._reads) as connection:
            rooms = [row["room"] for row in await connection.fetch("SELECT room FROM chat_rooms")]
        for room in rooms:
            while True:  # one short transaction per chunk: appends to the room wait for none of them long
                async with self._connection(self._reads) as connection:
                    status = await connection.execute(PRUNE, room, cutoff, keep, PRUNE_CHUNK)
                count = int(status.split()[-1])
                deleted += count
                if count < PRUNE_CHUNK:
                    break
        return deleted
