"""PostgreSQL for the tests: a fresh database of each test's own on the machine's server (127.0.0.1:5432),
or a server of a test's own (``postgres_server``) that the test may stop, kill and start again."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.redis_server import free_port

ADMIN_URL = os.environ.get("CHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
"""Where test databases are created (trust auth); CI makes sure a server answers there."""


def database_url(name: str) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}, and CI must run the PostgreSQL tests: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A new, empty database of this test's own, dropped afterwards."""
    name = "chat_test_" + secrets.token_hex(6)
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield database_url(name)
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# --- a server of a test's own, to stop, kill and start again --------------------------------------

READY_LINE = b"database system is ready to accept connections"


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name))
    return found[-1].parent if found else None


def _as_owner() -> list[str]:
    """What runs a command as the ``postgres`` OS user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _is_zombie(pid: int) -> bool:
    """Whether the process has exited and only waits for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class PostgresServer:
    """One PostgreSQL server in a temporary folder, on a free loopback port, that a test may stop and start again."""

    def __init__(self, bindir: Path, port: int | None = None, password: str | None = None) -> None:
        """Create the cluster: trust auth, or, given ``password``, user postgres with that password."""
        self.bindir = bindir
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="chat-postgres-"))  # not under pytest's root-only tmp dirs
        self.process: subprocess.Popen[bytes] | None = None
        auth = ["-A", "trust"]
        if password is not None:
            (self.workdir / "password").write_text(password)
            auth = ["-A", "scram-sha-256", f"--pwfile={self.workdir / 'password'}"]
        if os.geteuid() == 0:
            for path in (self.workdir, *self.workdir.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", *auth, "-E", "UTF8", "--no-sync"])

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """Everything the server printed, over every start."""
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str]) -> None:
        binary = str(self.bindir / command[0])
        result = subprocess.run([*_as_owner(), binary, *command[1:]], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it accepts connections; fail if it does not within ``timeout`` s."""
        assert self.process is None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}"]
        options += ["-c", "fsync=off", "-c", "shared_buffers=16MB"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*_as_owner(), str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if READY_LINE in log.read():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        lines = self.log_path.read_text(errors="replace").splitlines(keepends=True)
        raise RuntimeError("postgres did not start:\n" + "".join(lines[-20:]))

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the data written so far is kept."""
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        self.process = None

    def kill(self) -> None:
        """Kill the server and its backends at once (SIGKILL), as a crash would; committed data is kept."""
        if self.process is not None:
            family = self._family()
            self._signal(family, signal.SIGKILL)
            self.process.wait(timeout=30)
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in family):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"processes of the killed server are still there: {family}")
                time.sleep(0.02)
        self.process = None

    def freeze(self) -> None:
        """Stop the server and its backends (SIGSTOP): connections stay open but nothing is answered."""
        self._signal(self._family(), signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT)."""
        self._signal(self._family(), signal.SIGCONT)

    def _family(self) -> list[int]:
        """The postmaster and its children (backends leave its process group, so they are found by parent)."""
        assert self.process is not None
        postmaster = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:  # after the name: state, ppid
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    @staticmethod
    def _signal(pids: list[int], signum: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def remove(self) -> None:
        """Kill the server and delete its folder."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def require_postgres_binaries() -> Path:
    """Where initdb and postgres are; skip the test when they are missing, except under CI, where that fails it."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's binaries (initdb, postgres) are not installed, and CI must run these tests")
        pytest.skip("PostgreSQL's binaries (initdb, postgres) are not installed (apt-get install postgresql)")
    return bindir


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, running, to stop, kill and start again."""
    server = PostgresServer(require_postgres_binaries())
    try:
        server.start()
        yield server
    finally:
        server.remove()
