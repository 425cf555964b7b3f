"""The SQLite store (``sqlite:///PATH``): one file, one process, the standard library's ``sqlite3`` in WAL mode.

Appends go to one writer thread. The appends of an event-loop turn travel as one batch, and every
batch that arrives while a transaction is being written joins the next one (group commit): a
transaction holds whatever is waiting, never one await per row. Seqs are given inside the
transaction (the ``rooms`` table keeps each room's last seq; the writer remembers those of the
``max_rooms`` rooms it wrote last, once committed), so a failed commit uses none; only once it is
committed does the event loop learn of a message (``committed``, then its future).
Under load, a commit starts at most every ``COMMIT_INTERVAL`` (2 ms) after the previous one, since
most of a commit's cost is per commit, not per row. Checkpoints (copying the WAL into the database,
with their fsyncs) run in a thread of their own, so a commit never waits for one.
With ``sqlite_writer = "loop"`` each turn's batch is committed on the event loop's thread instead
(``_Writer.commit_now``; the thread then only prunes and probes, under the connection's lock).
Reads run in worker threads on connections of their own; in WAL mode they never block the writer.

What an acknowledged message survives, by ``sqlite_synchronous`` (in WAL mode):

- ``off``: nothing is flushed to disk by SQLite. A process crash (even SIGKILL) loses nothing that
  was acknowledged, since the operating system has the writes; an OS crash or a power loss can lose
  recent messages and may corrupt the database file.
- ``normal`` (the default): the WAL is flushed at checkpoints only. A process crash loses nothing
  acknowledged; an OS crash or a power loss can lose the messages of the last moments, but the
  database stays consistent.
- ``full``: the WAL is flushed at every commit (once per batch): acknowledged messages survive an
  OS crash and a power loss too, on a disk that honours flushes.
- ``extra``: the same as ``full`` in WAL mode (the extra flush concerns rollback journals).

A store belongs to one process: it holds an exclusive ``flock`` on ``PATH-lock`` as long as it runs.
The lock is on a file of its own because SQLite's own locks on the database are POSIX locks, which
a process loses on closing any descriptor of the file, such as one opened only to lock it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from chat.backends.base import PublishDone, Snapshot
from chat.exceptions import ConfigError, Unavailable
from chat.protocol import Member, Message
from chat.settings import Settings
from chat.stores.base import SCHEMA_VERSION, UNAVAILABLE, Append, Committed, Store, room_epoch

logger = logging.getLogger("chat.sqlite")

URL_PREFIX = "sqlite:///"
STOPPED = "store unavailable: stopped"
READERS = 4
"""Read connections, each used by one worker thread at a time."""
PRUNE_ROOMS = 100
"""Rooms an age-pruning transaction visits, at most."""
PRUNE_ROWS = 1000
"""Messages of one room an age-pruning transaction deletes, at most."""
COMMIT_INTERVAL = 0.002
"""Seconds from one commit's start to the next's, at least: what arrives meanwhile joins the next one."""
CHECKPOINT_INTERVAL = 0.25
"""Seconds between the checkpointer's passes while messages are written."""
WRITER_CHECKPOINT_PAGES = 20000
"""WAL pages (80 MiB) beyond which the writer checkpoints itself: only if the checkpointer cannot keep up."""
PROBE_INTERVAL = 1.0
"""Seconds between the writer's probe writes while writes fail and no append comes."""
LATEST = 1 << 62
"""A seq above every seq."""

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE rooms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, seq INTEGER NOT NULL)",
    "CREATE TABLE messages (room INTEGER NOT NULL, seq INTEGER NOT NULL, sender_id TEXT NOT NULL,"
    " sender_name TEXT NOT NULL, text TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID",
)
"""Version 1 (``SCHEMA_VERSION``); a later release migrates it in ``_check_schema``."""

NEW_ROOM = "INSERT INTO rooms (name, seq) VALUES (?, 0)"
SET_SEQ = "UPDATE rooms SET seq = ? WHERE id = ?"
INSERT_MESSAGE = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)"
DROP_UP_TO = "DELETE FROM messages WHERE room = ? AND seq <= ?"
DROP_EXPIRED = (  # a prefix of the room: history stays contiguous
    "DELETE FROM messages WHERE room = ?1 AND seq <= (SELECT max(seq) FROM"
    " (SELECT seq, ts FROM messages WHERE room = ?1 ORDER BY seq LIMIT ?3) WHERE ts < ?2)"
)
ROOM = "SELECT id, seq FROM rooms WHERE name = ?"
COLUMNS = "SELECT seq, sender_id, sender_name, text, ts FROM messages"
BEFORE = f"{COLUMNS} WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
AFTER = f"{COLUMNS} WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"

T = TypeVar("T")
Settle = Callable[[list[Append], "list[Message] | Exception"], None]
"""Hands a written batch's outcome (its messages, or what failed it) back to the event loop."""
Row = tuple[int, str, str, str, int]


class SqliteStore(Store):
    """Every message in one SQLite file, written by one thread, read by a few."""

    name = "sqlite"

    def __init__(self, url: str, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, settings)
        self.path = _path(url)
        self.epoch = ""
        self._clock = clock
        self._committed: Committed | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[Append] = []  # this loop turn's appends
        self._inbox: queue.SimpleQueue[list[Append] | None] = queue.SimpleQueue()
        self._writer: _Writer | None = None
        self._readers: _Readers | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._lock: int | None = None
        self._checkpointer: _Checkpointer | None = None
        self._in_loop = settings.sqlite_writer == "loop"

    @property
    def location(self) -> str:
        """The database file's absolute path, for the start-up log."""
        return self.path

    async def start(self, committed: Committed) -> None:
        self._committed = committed
        self._loop = asyncio.get_running_loop()
        self._limiter = anyio.CapacityLimiter(READERS)
        lock, connection, self.epoch, self._readers = await anyio.to_thread.run_sync(self._open)
        self._lock = lock
        self._checkpointer = _Checkpointer(self.path)
        self._writer = _Writer(
            connection, self.path, self.settings, self._clock, self._inbox, self._settle_soon, self._checkpointer.due
        )
        self._checkpointer.thread.start()
        self._writer.thread.start()

    async def stop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._hand_over()
        self._inbox.put(None)
        try:
            await anyio.to_thread.run_sync(writer.thread.join)  # its last batches are settled before it returns
        finally:
            if self._checkpointer is not None:
                await anyio.to_thread.run_sync(self._checkpointer.stop)
                self._checkpointer = None
            if self._readers is not None:
                self._readers.close()
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def append(self, room: str, sender: Member, text: str, done: PublishDone | None = None) -> asyncio.Future[Message]:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        append = Append(room, sender, text, time.time_ns() // 1_000_000, future, done)
        if self._writer is None:
            _settle_failed([append], STOPPED)
            return future
        queued = self._queued
        queued.append(append)
        if len(queued) == 1:  # the turn's first append: the whole turn goes to the writer as one batch
            loop.call_soon(self._hand_over)
        return future

    async def snapshot(self, room: str, since: int | None, epoch: str | None, count: int) -> Snapshot:
        recover = since if epoch == room_epoch(self.epoch, room) else None
        seq, rows, recovered = await self._read(_read_snapshot, room, recover, count, self.settings.history_size)
        return Snapshot(seq, room_epoch(self.epoch, room), _messages(room, rows), recovered)

    async def history(self, room: str, before: int | None, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        rows = await self._read(_read_before, room, LATEST if before is None else before, limit)
        return _messages(room, rows)

    async def rooms(self) -> list[str]:
        return await self._read(_read_rooms)

    async def exists(self, room: str) -> bool:
        return await self._read(_read_exists, room)

    async def healthy(self) -> bool:
        writer = self._writer
        return writer is not None and writer.healthy and writer.thread.is_alive()

    def _open(self) -> tuple[int, sqlite3.Connection, str, _Readers]:
        """Lock the file, open it for writing, create or check the schema, open the readers (in a thread)."""
        lock = _lock(self.path)
        connection: sqlite3.Connection | None = None
        try:
            connection = self._open_writer()
            epoch = _check_schema(connection, self.path)
            readers = _Readers(self.path, READERS)
        except BaseException as exc:
            if connection is not None:
                connection.close()
            os.close(lock)
            if isinstance(exc, sqlite3.Error):
                raise ConfigError(f"cannot open store {self.path}: {_one_line(exc)}") from None
            raise
        return lock, connection, epoch, readers

    def _open_writer(self) -> sqlite3.Connection:
        """The writer's connection, in WAL mode with the configured ``synchronous``."""
        connection = _connect(self.path)
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"cannot open store {self.path}: WAL mode is not available here (got {mode!r})")
            connection.execute(f"PRAGMA synchronous = {self.settings.sqlite_synchronous.upper()}")
            connection.execute("PRAGMA journal_size_limit = 67108864")
            connection.execute("PRAGMA cache_size = -16384")  # 16 MiB: a batch over many rooms touches many pages
            # Checkpoints (and their fsyncs) are the checkpointer's: a commit never waits for one.
            connection.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        except BaseException:
            connection.close()
            raise
        return connection

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        """Run ``query(connection, *args)`` on a read connection in a worker thread."""
        readers = self._readers
        if readers is None or self._writer is None:
            raise Unavailable(STOPPED)
        try:
            return await anyio.to_thread.run_sync(readers.run, query, args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise Unavailable(f"{UNAVAILABLE}: {_one_line(exc)}") from exc

    def _hand_over(self) -> None:
        """Give this turn's appends to the writer, as one batch."""
        if self._queued:
            batch, self._queued = self._queued, []
            if self._in_loop and self._writer is not None:
                self._writer.commit_now(batch, self._settle)
            else:
                self._inbox.put(batch)

    def _settle_soon(self, batch: list[Append], outcome: list[Message] | Exception) -> None:
        """From the writer thread: settle a batch on the event loop (in the order batches were written)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, batch, outcome)

    def _settle(self, batch: list[Append], outcome: list[Message] | Exception) -> None:
        """Tell ``committed`` of each message, then resolve its future and call its ``done``."""
        if isinstance(outcome, Exception):  # the database's own words; a bug's are only in the log
            _settle_failed(
                batch, f"{UNAVAILABLE}: {_one_line(outcome)}" if isinstance(outcome, sqlite3.Error) else UNAVAILABLE
            )
            return
        committed, epoch = self._committed, self.epoch
        assert committed is not None
        for append, message in zip(batch, outcome, strict=True):
            try:
                committed(message, room_epoch(epoch, message.room))
            except Exception:
                logger.exception("the committed callback failed")
            append.settle(message)


class _Writer:
    """The one thread that writes: batches in order, each with whatever else waits, in one transaction."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: str,
        settings: Settings,
        clock: Callable[[], float],
        inbox: queue.SimpleQueue[list[Append] | None],
        settle: Settle,
        written: Callable[[], None],
    ) -> None:
        self.healthy = True
        self.thread = threading.Thread(target=self._run, name="chat-sqlite-writer", daemon=True)
        self._connection = connection
        self._path = path
        self._keep = settings.retention_messages
        self._max_age = settings.retention_seconds
        self._prune_every = min(max(settings.retention_seconds / 10, 1.0), 60.0)
        self._clock = clock
        self._inbox = inbox
        self._settle = settle
        self._written = written
        self.lock = threading.Lock()  # the connection's: the thread's pruning and probes against commit_now
        self._next_prune = clock()
        self._last_commit = 0.0
        self._positions: OrderedDict[str, tuple[int, int]] = OrderedDict()  # room -> committed id, seq
        self._max_positions = settings.max_rooms
        self._prune_from = 0  # the room id the age pruning goes on after

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                try:
                    stopping = self._serve()
                except Exception:  # a bug: the batch at hand was settled; go on with the next
                    logger.exception("store %s: the writer failed", self._path)
        finally:
            self._connection.close()

    def commit_now(self, batch: list[Append], settle: Settle) -> None:
        """Commit a batch in the calling thread (``sqlite_writer = "loop"``: the event loop's), then ``settle`` it."""
        with self.lock:
            self._commit(batch, settle)

    def _serve(self) -> bool:
        """Write what waits (after a step of age pruning, when one is due); whether the store stops."""
        batch, stopping = self._collect(self._idle_timeout())
        if self._max_age and not stopping and self._clock() >= self._next_prune:
            with self.lock:
                self._prune_expired()
        pause = self._last_commit + COMMIT_INTERVAL - time.monotonic()
        if batch and not stopping and pause > 0:  # a commit's cost is mostly per commit: let more join it
            time.sleep(pause)
            more, stopping = self._collect(0.0)
            batch += more
        if batch:
            self._last_commit = time.monotonic()
            with self.lock:
                self._commit(batch, self._settle)
        elif not self.healthy and not stopping:
            with self.lock:
                self._probe()
        return stopping

    def _collect(self, timeout: float | None) -> tuple[list[Append], bool]:
        """Every batch handed over by now, waiting ``timeout`` for the first (None: until there is one); and
        whether to stop."""
        batch: list[Append] = []
        try:
            item = self._inbox.get(timeout=timeout) if timeout != 0.0 else self._inbox.get_nowait()
            while item is not None:
                batch += item
                item = self._inbox.get_nowait()
        except queue.Empty:
            return batch, False
        return batch, True

    def _idle_timeout(self) -> float | None:
        if not self.healthy:
            return PROBE_INTERVAL
        if self._max_age:
            return max(0.0, self._next_prune - self._clock())
        return None

    def _commit(self, batch: list[Append], settle: Settle) -> None:
        try:
            messages = self._write(batch)
        except sqlite3.Error as exc:
            self._failed(exc)
            settle(batch, exc)
        except Exception as exc:
            logger.exception("store %s: a batch failed", self._path)
            settle(batch, exc)
        else:
            self._succeeded()
            settle(batch, messages)
            self._written()

    def _write(self, batch: list[Append]) -> list[Message]:
        """Give the batch its seqs and commit it, with the pruning ``retention_messages`` asks for."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            rooms: dict[str, list[int]] = {}  # room -> [id, last seq given], for this transaction
            rows = []
            messages = []
            for append in batch:
                room = append.room
                position = rooms.get(room)
                if position is None:
                    position = rooms[room] = self._position(room)
                seq = position[1] = position[1] + 1
                sender = append.sender
                rows.append((position[0], seq, sender.id, sender.name, append.text, append.ts))
                messages.append(Message(room, seq, sender, append.text, append.ts))
            connection.executemany(INSERT_MESSAGE, rows)
            connection.executemany(SET_SEQ, [(seq, room_id) for room_id, seq in rooms.values()])
            if self._keep:
                connection.executemany(DROP_UP_TO, [(room_id, seq - self._keep) for room_id, seq in rooms.values()])
            connection.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._remember(rooms)
        return messages

    def _position(self, room: str) -> list[int]:
        """The room's id and last seq, as committed (a new room gets its row in this transaction)."""
        known = self._positions.get(room)
        if known is not None:
            self._positions.move_to_end(room)
            return list(known)
        found = self._connection.execute(ROOM, (room,)).fetchone()
        if found is not None:
            return list(found)
        created = self._connection.execute(NEW_ROOM, (room,)).lastrowid
        assert created is not None
        return [created, 0]

    def _remember(self, rooms: dict[str, list[int]]) -> None:
        """Keep the committed positions of the rooms of a batch, and of the ``max_rooms`` used last at most."""
        positions = self._positions
        for room, (room_id, seq) in rooms.items():
            positions[room] = (room_id, seq)
        while len(positions) > self._max_positions:
            positions.popitem(last=False)

    def _prune_expired(self) -> None:
        """Delete expired messages of the next few rooms, in one short transaction; a pass ends at the last room."""
        connection = self._connection
        cutoff = int((self._clock() - self._max_age) * 1000)
        try:
            connection.execute("BEGIN IMMEDIATE")
            rooms = connection.execute(
                "SELECT id FROM rooms WHERE id > ? ORDER BY id LIMIT ?", (self._prune_from, PRUNE_ROOMS)
            ).fetchall()
            for (room_id,) in rooms:
                if connection.execute(DROP_EXPIRED, (room_id, cutoff, PRUNE_ROWS)).rowcount >= PRUNE_ROWS:
                    break  # the room may have more: the next transaction starts with it
                self._prune_from = room_id
            else:
                if len(rooms) < PRUNE_ROOMS:
                    self._prune_from = 0
                    self._next_prune = self._clock() + self._prune_every
            connection.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            logger.warning("store %s: pruning expired messages failed: %s", self._path, _one_line(exc))
            self._prune_from = 0
            self._next_prune = self._clock() + self._prune_every

    def _probe(self) -> None:
        """Try a write that needs room on disk, to learn whether writes work again."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO meta VALUES ('probe', zeroblob(16384))")
            connection.execute("DELETE FROM meta WHERE key = 'probe'")
            connection.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
        else:
            self._succeeded()

    def _rollback(self) -> None:
        if self._connection.in_transaction:
            try:
                self._connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                logger.warning("store %s: rollback failed: %s", self._path, _one_line(exc))

    def _failed(self, exc: sqlite3.Error) -> None:
        if self.healthy:
            logger.error("store %s cannot record messages: %s", self._path, _one_line(exc))
        self.healthy = False

    def _succeeded(self) -> None:
        if not self.healthy:
            logger.warning("store %s records messages again", self._path)
        self.healthy = True


class _Checkpointer:
    """Copies the WAL into the database from a thread and a connection of its own, while writes go on.

    A commit that had to checkpoint would wait for the copy and, above ``synchronous = off``, for its
    fsyncs: a stall of every publish of the moment. Passive checkpoints here never block the writer
    or the readers; the writer resets the WAL once one is complete.
    """

    def __init__(self, path: str) -> None:
        self.thread = threading.Thread(target=self._run, name="chat-sqlite-checkpointer", daemon=True)
        self._path = path
        self._connection = _connect(path)
        self._wanted = threading.Event()
        self._stopping = False

    def due(self) -> None:
        """Something was committed: checkpoint within ``CHECKPOINT_INTERVAL``."""
        self._wanted.set()

    def stop(self) -> None:
        """End the thread (blocking) and close its connection."""
        self._stopping = True
        self._wanted.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            while True:
                self._wanted.wait()
                if self._stopping:
                    return
                time.sleep(CHECKPOINT_INTERVAL)  # let a few commits gather: one pass copies them all
                self._wanted.clear()
                if self._stopping:  # stop() sets it before waking us: a wake-up cleared here is seen
                    return
                try:
                    self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    logger.warning("store %s: checkpoint failed: %s", self._path, _one_line(exc))
        finally:
            self._connection.close()


class _Readers:
    """A few read connections, each used by one worker thread at a time (the store's limiter sees to it)."""

    def __init__(self, path: str, size: int) -> None:
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            for _ in range(size):
                self._idle.append(_connect(path, query_only=True))
        except BaseException:
            self.close()
            raise

    def run(self, query: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._lock:
            if self._closed:
                raise Unavailable(STOPPED)
            connection = self._idle.pop()
        try:
            return query(connection, *args)
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            with self._lock:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


# --- reads, each on a read connection in a worker thread -------------------------------------------


def _read_snapshot(
    connection: sqlite3.Connection, room: str, since: int | None, count: int, catch_up: int
) -> tuple[int, list[Row], bool]:
    """The room's seq and what a joining member sees: the messages after ``since`` when every one is kept
    (at most ``catch_up`` of them), else the latest ``count``."""
    connection.execute("BEGIN")  # the seq and the messages from one snapshot of the database
    found = connection.execute(ROOM, (room,)).fetchone()
    room_id, seq = found if found else (0, 0)
    if since is not None and 0 <= since <= seq and seq - since <= catch_up:
        missed = connection.execute(AFTER, (room_id, since, seq - since)).fetchall()
        if len(missed) == seq - since:
            connection.execute("COMMIT")
            return seq, missed, True
    latest = connection.execute(BEFORE, (room_id, LATEST, count)).fetchall() if count > 0 else []
    connection.execute("COMMIT")
    latest.reverse()
    return seq, latest, False


def _read_before(connection: sqlite3.Connection, room: str, before: int, limit: int) -> list[Row]:
    found = connection.execute(ROOM, (room,)).fetchone()
    if found is None:
        return []
    rows: list[Row] = connection.execute(BEFORE, (found[0], before, limit)).fetchall()
    rows.reverse()
    return rows


def _read_rooms(connection: sqlite3.Connection) -> list[str]:
    return [name for (name,) in connection.execute("SELECT name FROM rooms ORDER BY name")]


def _read_exists(connection: sqlite3.Connection, room: str) -> bool:
    return connection.execute(ROOM, (room,)).fetchone() is not None


def _messages(room: str, rows: list[Row]) -> list[Message]:
    return [Message(room, seq, Member(sender, name), text, ts) for seq, sender, name, text, ts in rows]


# --- opening ------------------------------------------------------------------------------------


def _path(url: str) -> str:
    """The absolute path ``sqlite:///PATH`` names (relative to the working directory, or ``sqlite:////abs``)."""
    if not url.startswith(URL_PREFIX) or url == URL_PREFIX:
        raise ConfigError(f"a SQLite store is sqlite:///PATH (relative) or sqlite:////PATH (absolute), got {url!r}")
    return os.path.realpath(url.removeprefix(URL_PREFIX))


def _lock(path: str) -> int:
    """Hold ``PATH-lock`` exclusively: a second server on the same file is refused, the first goes on."""
    lock_path = f"{path}-lock"
    try:
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open store {path}: {exc.strerror} ({lock_path})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        raise ConfigError(f"store {path} is in use by another server (it holds {lock_path})") from None
    return lock


def _connect(path: str, query_only: bool = False) -> sqlite3.Connection:
    """A connection whose transactions are explicit, usable from any one thread at a time."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    if query_only:
        connection.execute("PRAGMA query_only = ON")
    return connection


def _check_schema(connection: sqlite3.Connection, path: str) -> str:
    """Create the schema in an empty database, or check the version of the one there; the database's epoch."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            for statement in SCHEMA:
                connection.execute(statement)
            epoch = secrets.token_urlsafe(9)
            connection.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("schema_version", SCHEMA_VERSION), ("epoch", epoch)]
            )
        elif "meta" not in tables:
            raise ConfigError(f"cannot open store {path}: a database of another application (no meta table)")
        else:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            version = meta.get("schema_version")
            if not isinstance(version, int) or not isinstance(meta.get("epoch"), str):
                raise ConfigError(f"cannot open store {path}: its meta table has no schema version or epoch")
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"cannot open store {path}: schema version {version} was written by a newer release"
                    f" (this one reads version {SCHEMA_VERSION})"
                )
            # A later release migrates older versions here, in this transaction.
            epoch = meta["epoch"]
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return epoch


def _settle_failed(batch: list[Append], detail: str) -> None:
    for append in batch:
        append.settle(Unavailable(detail))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
