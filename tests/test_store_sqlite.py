"""The SQLite store beyond the contract: one file, one process, bad input at start, a full disk, retention."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from chat.exceptions import ConfigError, Unavailable
from chat.protocol import Member, Message
from chat.settings import SQLITE_SYNCHRONOUS, Settings
from chat.stores import SCHEMA_VERSION
from chat.stores.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

ALICE = Member("a1", "alice")
Opener = Callable[..., Awaitable[SqliteStore]]


def ignore(message: Message, epoch: str) -> None:
    """A ``committed`` callback that needs nothing."""


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """Start stores (of a given class, on a given path, with settings changes); every one is stopped at the end."""
    stores: list[SqliteStore] = []

    async def open_(
        path: Path, cls: type[SqliteStore] = SqliteStore, clock: Callable[[], float] = time.time, **changes: object
    ) -> SqliteStore:
        store = cls(url_of(path), Settings(store=url_of(path)).replace(**changes), clock)
        await store.start(ignore)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.stop()


async def append_all(store: SqliteStore, room: str, texts: list[str]) -> list[Message | BaseException]:
    """Append every text in one loop turn (one batch), then wait for all of them."""
    futures = [store.append(room, ALICE, text) for text in texts]
    with anyio.fail_after(10):
        return list(await asyncio.gather(*futures, return_exceptions=True))


async def seqs(store: SqliteStore, room: str) -> list[int]:
    return [m.seq for m in await store.history(room, None, 100)]


async def refusal(path: Path | str) -> str:
    """The one line a store on ``path`` is refused with at start."""
    store = SqliteStore(f"sqlite:///{path}", Settings())
    with pytest.raises(ConfigError) as raised:
        await store.start(ignore)
    detail = raised.value.detail
    assert "\n" not in detail
    return detail


async def test_a_second_store_on_the_same_file_is_refused(opened: Opener, tmp_path: Path) -> None:
    """A second store on a file in use is refused, naming the file; the first goes on recording."""
    first = await opened(tmp_path / "chat.db")
    await append_all(first, "r", ["one"])
    detail = await refusal(tmp_path / "chat.db")
    assert str(tmp_path / "chat.db") in detail
    assert "in use" in detail
    assert [m.seq for m in await append_all(first, "r", ["two"]) if isinstance(m, Message)] == [2]
    assert await seqs(first, "r") == [1, 2]


async def test_a_database_of_a_newer_schema_is_refused_and_kept(opened: Opener, tmp_path: Path) -> None:
    """A schema version above this release's is refused with a clear line, and the file is left as it was."""
    path = tmp_path / "chat.db"
    store = await opened(path)
    await store.stop()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    detail = await refusal(path)
    assert str(path) in detail
    assert "newer release" in detail
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            SCHEMA_VERSION + 1,
        )


async def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path: Path) -> None:
    """A file of garbage is refused with a clear line, and not touched."""
    path = tmp_path / "chat.db"
    garbage = b"this is not a database\n" * 200
    path.write_bytes(garbage)
    detail = await refusal(path)
    assert str(path) in detail
    assert "not a database" in detail
    assert path.read_bytes() == garbage


async def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    """A SQLite database with tables but no meta table is not ours: refused, not written into."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    assert "another application" in await refusal(path)


async def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """A path in a directory that does not exist is refused, naming the path."""
    path = tmp_path / "missing" / "chat.db"
    detail = await refusal(path)
    assert str(path) in detail
    assert "No such file or directory" in detail


async def test_a_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A path whose directory is a regular file cannot be created (true even for root)."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "chat.db"
    detail = await refusal(path)
    assert str(path) in detail
    assert "Not a directory" in detail


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/chat.db"])
def test_a_url_without_a_path_is_refused(url: str) -> None:
    """The URL must be sqlite:///PATH."""
    with pytest.raises(ConfigError, match="sqlite:///PATH"):
        SqliteStore(url, Settings())


async def test_a_relative_path_is_resolved_against_the_working_directory(
    opened: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///chat.db is chat.db in the working directory; ``path`` is absolute."""
    monkeypatch.chdir(tmp_path)
    store = SqliteStore("sqlite:///data.db", Settings())
    assert store.path == str(tmp_path / "data.db")  # tmp_path has no symlinks
    await store.start(ignore)
    try:
        await append_all(store, "r", ["here"])
    finally:
        await store.stop()
    assert (tmp_path / "data.db").exists()


class SmallDisk(SqliteStore):
    """A store whose database cannot grow beyond a few pages, as on a full disk."""

    def _open_writer(self) -> sqlite3.Connection:
        connection = super()._open_writer()
        connection.execute("PRAGMA max_page_count = 40")
        return connection


async def test_a_full_disk_fails_whole_batches_and_keeps_seqs_gap_free(opened: Opener, tmp_path: Path) -> None:
    """On a full disk a batch fails whole with Unavailable (nothing half-written, no seq used); freeing space
    lets the next batches continue the sequence, and ``healthy`` follows."""
    path = tmp_path / "chat.db"
    store = await opened(path, SmallDisk)
    bulky = "x" * 2000
    written = 0
    while True:
        results = await append_all(store, "filler", [bulky] * 4)
        if isinstance(results[0], Unavailable):
            break
        written += 4
        assert written < 1000, "the database never filled up"
    assert all(isinstance(result, Unavailable) for result in results)
    assert "store unavailable: database or disk is full" in str(results[0])
    assert not await store.healthy()
    assert [m.seq for m in await store.history("filler", None, 1000)] == list(range(1, written + 1))

    with sqlite3.connect(path, timeout=5) as connection:  # free some room, as an operator would
        connection.execute("DELETE FROM messages WHERE seq <= ?", (written // 2,))
    again = await append_all(store, "filler", ["after"])
    assert [m.seq for m in again if isinstance(m, Message)] == [written + 1]
    assert await store.healthy()


async def test_retention_by_age_deletes_expired_messages(opened: Opener, tmp_path: Path) -> None:
    """With ``retention_seconds``, messages older than that are pruned (before the next batch is written)."""
    now = [time.time()]
    store = await opened(tmp_path / "chat.db", retention_seconds=60, clock=lambda: now[0])
    await append_all(store, "old", ["1", "2"])
    await append_all(store, "r", ["1", "2", "3"])
    now[0] += 61
    await append_all(store, "r", ["4"])
    assert await seqs(store, "old") == []
    assert await seqs(store, "r") == [4]
    snapshot = await store.snapshot("r", 1, (await store.snapshot("r", None, None, 0)).epoch, 10)
    assert (snapshot.seq, snapshot.recovered) == (4, False)


class Observed(SqliteStore):
    """A store that shows its writer's connection."""

    connection: sqlite3.Connection

    def _open_writer(self) -> sqlite3.Connection:
        self.connection = super()._open_writer()
        return self.connection


@pytest.mark.parametrize("level", SQLITE_SYNCHRONOUS)
async def test_every_synchronous_level_is_applied(opened: Opener, tmp_path: Path, level: str) -> None:
    """``sqlite_synchronous`` sets the writer's PRAGMA synchronous, in WAL mode, and the store records."""
    store = await opened(tmp_path / "chat.db", Observed, sqlite_synchronous=level)
    assert isinstance(store, Observed)
    assert store.connection.execute("PRAGMA synchronous").fetchone() == (SQLITE_SYNCHRONOUS.index(level),)
    assert store.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert [m.seq for m in await append_all(store, "r", ["x"]) if isinstance(m, Message)] == [1]


async def test_ten_thousand_messages_page_back_to_the_first(opened: Opener, tmp_path: Path) -> None:
    """10k messages page back with ``before`` to seq 1, 100 at a time, oldest first."""
    store = await opened(tmp_path / "chat.db")
    for start in range(0, 10_000, 1000):
        await append_all(store, "r", [str(n) for n in range(start, start + 1000)])
    seen: list[int] = []
    before: int | None = None
    while page := await store.history("r", before, 100):
        seen = [m.seq for m in page] + seen
        before = page[0].seq
    assert seen == list(range(1, 10_001))


async def test_stop_commits_what_is_on_its_way(opened: Opener, tmp_path: Path) -> None:
    """Appends not yet handed to the writer when the store stops are committed, not dropped."""
    path = tmp_path / "chat.db"
    store = await opened(path)
    futures = [store.append("r", ALICE, str(n)) for n in range(100)]
    with anyio.fail_after(10):
        await store.stop()
    assert [future.result().seq for future in futures] == list(range(1, 101))
    reopened = await opened(path)
    assert len(await reopened.history("r", None, 100)) == 100


async def test_appends_after_stop_fail(opened: Opener, tmp_path: Path) -> None:
    """A stopped store refuses appends with Unavailable at once, and calls their ``done``."""
    store = await opened(tmp_path / "chat.db")
    await store.stop()
    seen: list[asyncio.Future[Message]] = []
    future = store.append("r", ALICE, "late", seen.append)
    assert seen == [future]
    with pytest.raises(Unavailable):
        future.result()


async def test_a_long_absence_is_not_recovered(opened: Opener, tmp_path: Path) -> None:
    """A member further behind than ``history_size`` gets the latest messages, not everything it missed."""
    store = await opened(tmp_path / "chat.db", history_size=10, history_on_join=5)
    await append_all(store, "r", [str(n) for n in range(30)])
    epoch = (await store.snapshot("r", None, None, 0)).epoch
    assert (await store.snapshot("r", 20, epoch, 5)).recovered
    behind = await store.snapshot("r", 5, epoch, 5)
    assert not behind.recovered
    assert [m.seq for m in behind.messages] == [26, 27, 28, 29, 30]


WRITER = """
import asyncio, sys
from chat.protocol import Member
from chat.settings import Settings
from chat.stores.sqlite import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1], Settings())
    await store.start(lambda message, epoch: None)
    n = 0
    while True:
        futures = [store.append("r", Member("a", "a"), str(n + i)) for i in range(50)]
        n += 50
        for future in asyncio.as_completed(futures):
            print((await future).seq, flush=True)

asyncio.run(main())
"""


async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """A server killed with SIGKILL mid-stream keeps every message it acknowledged, seqs gap-free."""
    path = tmp_path / "chat.db"
    process = await anyio.open_process([sys.executable, "-c", WRITER, url_of(path)], stderr=subprocess.DEVNULL)
    acked = 0
    assert process.stdout is not None
    with anyio.fail_after(20):
        buffer = b""
        while acked < 5000:
            buffer += await process.stdout.receive()
            *lines, buffer = buffer.split(b"\n")
            acked = max([acked, *(int(line) for line in lines)])
    process.send_signal(signal.SIGKILL)
    with anyio.fail_after(10):
        await process.wait()
    with sqlite3.connect(path) as connection:  # what a restart recovers from the WAL
        count, first, last = connection.execute("SELECT count(*), min(seq), max(seq) FROM messages").fetchone()
    assert (count, first) == (last, 1)
    assert last >= acked


async def test_rooms_beyond_max_rooms_keep_their_sequence(opened: Opener, tmp_path: Path) -> None:
    """The writer remembers the positions of ``max_rooms`` rooms; the others continue from the database."""
    store = await opened(tmp_path / "chat.db", max_rooms=2)
    rooms = [f"r{n}" for n in range(5)]
    for expected in (1, 2, 3):
        for room in rooms:
            assert [m.seq for m in await append_all(store, room, ["x"]) if isinstance(m, Message)] == [expected]
    assert await store.rooms() == rooms
