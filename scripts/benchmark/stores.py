"""Durable stores for the servers under test: a fresh one per server start, removed afterwards.

``sqlite`` is a new file in a temporary directory of its own; ``postgresql`` a new database on the
machine's PostgreSQL (``ADMIN_URL``, loopback, trust auth), created before the server starts and
dropped (``WITH (FORCE)``) after it stopped. The PostgreSQL backend processes that serve a database
are found by their process title (``postgres: [cluster: ]USER DATABASE HOST(PORT) STATE``), so that
their CPU counts as the server's, like redis-server's for ``chat-redis``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from benchmark import procfs

StoreKind = Literal["sqlite", "postgresql"]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Where the benchmark's databases are created and dropped."""
ADMIN_TIMEOUT = 10.0


class StoreFailed(RuntimeError):
    """A store could not be made ready (no PostgreSQL, no asyncpg, ...)."""


def sqlite_url(path: Path) -> str:
    """``sqlite:///PATH``; an absolute path keeps its leading slash (``sqlite:////tmp/...``)."""
    return f"sqlite:///{path}"


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    return admin_url.rsplit("/", 1)[0] + "/" + name


def is_backend_of(title: str, database: str) -> bool:
    """Whether a process title is that of a PostgreSQL backend connected to ``database``."""
    if not title.startswith("postgres:"):
        return False
    words = title.split()
    # A backend's title is "postgres: [cluster:] user database host(port) state".
    return any(words[index] == database and "(" in words[index + 1] for index in range(1, len(words) - 1))


async def admin(statement: str) -> None:
    """Run one statement on the admin database."""
    try:
        import asyncpg
    except ImportError:
        raise StoreFailed("asyncpg is not installed (the postgresql extra)") from None
    try:
        connection = await asyncpg.connect(ADMIN_URL, timeout=ADMIN_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StoreFailed(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}") from None
    try:
        await connection.execute(statement, timeout=ADMIN_TIMEOUT)
    finally:
        await connection.close()


class ScratchStore:
    """A fresh store of one kind: ``url`` for the server, ``remove()`` afterwards."""

    def __init__(self, kind: StoreKind, workdir: Path) -> None:
        self.kind = kind
        self.directory: Path | None = None
        self.database = ""
        self.seen: dict[int, float] = {}
        """CPU seconds last read of every backend process that served the database (kept once it exits)."""
        if kind == "sqlite":
            workdir.mkdir(parents=True, exist_ok=True)
            self.directory = Path(tempfile.mkdtemp(prefix="chat-bench-sqlite-", dir=workdir))
            self.url = sqlite_url(self.directory / "chat.db")
        else:
            self.database = "chat_bench_" + secrets.token_hex(6)
            asyncio.run(admin(f'CREATE DATABASE "{self.database}"'))
            self.url = database_url(self.database)

    def size_bytes(self) -> int:
        """What the store takes on disk (SQLite: its files; PostgreSQL: 0, not read)."""
        if self.directory is None:
            return 0
        return sum(path.stat().st_size for path in self.directory.iterdir() if path.is_file())

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends connected to this database now (none for SQLite)."""
        if not self.database:
            return []
        found: list[int] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and is_backend_of(procfs.title(int(entry)), self.database):
                found.append(int(entry))
        return found

    def cpu_seconds(self) -> float:
        """CPU time of every backend that served the database so far (those gone count what was last read)."""
        for pid in self.backend_pids():
            self.seen[pid] = max(self.seen.get(pid, 0.0), procfs.cpu_seconds(pid))
        return sum(self.seen.values())

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        if self.database:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
