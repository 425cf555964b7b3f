"""The servers under test: how each one is started on a free loopback port, measured, and stopped.

``chat``, ``chat-delay``, ``chat-sqlite``, ``chat-redis`` and ``chat-redis-pg`` are this project
(``python -m chat``, with the per-connection rate limit off and the connection cap out of the way).
``chat`` and ``chat-delay`` name ``--store memory://`` (the bounded history of the memory backend),
so that they stay the memory baseline whatever the command line's default store; ``chat-delay``
adds a 10 ms write delay (``--write-delay 0.01``). ``chat-sqlite`` records in a fresh SQLite file,
``chat-redis-pg`` in a fresh PostgreSQL database (``stores.py``); ``chat-redis`` and
``chat-redis-pg`` get their own redis-server, started here without persistence; ``chat-redis2`` is
``chat-redis`` with two uvicorn worker processes (``--workers 2``) on that one redis-server. The CPU of that
redis-server and of the PostgreSQL backends serving the database counts as the server's. ``seed``
and ``raw`` are the references beside this file. A server is ready once its own process holds the
socket listening on its port (read from /proc), so no log line is needed and every server can run
at the same log level.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark import procfs
from benchmark.stores import ScratchStore, StoreFailed, StoreKind

SCRIPTS = Path(__file__).resolve().parent.parent
ROOT = SCRIPTS.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
BIND_ATTEMPTS = 5
BIND_CLASH = "address already in use"
PR_SET_PDEATHSIG = 1
LISTEN_POLL = 0.01
"""Seconds between looks at whether a starting server listens yet (``restart`` times the start)."""
EXIT_POLL = 0.005
"""Seconds between looks at whether a stopping server exited (``storm`` times its restart)."""


@dataclass(frozen=True)
class Kind:
    """One server the benchmark knows."""

    name: str
    acks: bool
    """Answers a message that has a ``ref`` with an ``ack`` (otherwise publishers count their echoes)."""
    redis: bool
    chat_args: tuple[str, ...] | None = None
    """This project's server (``python -m chat``) with these arguments of its own; None: a reference server."""
    store: StoreKind | None = None
    """The durable store it records in (a fresh one per start); None: none (memory or redis history, or a reference)."""
    baseline: str | None = None
    """The same server without its durable store, which the tables compare it with."""


MEMORY_STORE = ("--store", "memory://")
KINDS = {
    "chat": Kind("chat", acks=True, redis=False, chat_args=MEMORY_STORE),  # memory backend, bounded history
    "chat-sqlite": Kind("chat-sqlite", acks=True, redis=False, chat_args=(), store="sqlite", baseline="chat"),
    "chat-redis": Kind("chat-redis", acks=True, redis=True, chat_args=()),
    "chat-redis2": Kind("chat-redis2", acks=True, redis=True, chat_args=("--workers", "2")),  # two processes
    "chat-redis-pg": Kind(
        "chat-redis-pg", acks=True, redis=True, chat_args=(), store="postgresql", baseline="chat-redis"
    ),
    "chat-delay": Kind("chat-delay", acks=True, redis=False, chat_args=(*MEMORY_STORE, "--write-delay", "0.01")),
    "seed": Kind("seed", acks=False, redis=False),  # classic Starlette example, serial await send_text
    "raw": Kind("raw", acks=False, redis=False),  # websockets library, websockets.broadcast()
}


@dataclass(frozen=True)
class ServerOptions:
    """What every server of one run shares."""

    deflate: bool = False
    log_level: str = "warning"
    chat_args: tuple[str, ...] = ()
    workdir: Path = Path("/tmp")
    cpus: frozenset[int] | None = None
    """CPUs the server process may run on (``--pin``); None: any."""


@dataclass(frozen=True)
class Restarted:
    """A server process stopped and started again on its port (``Server.restart_in_place``)."""

    exited_s: float
    """From the SIGTERM to the old process's exit."""
    listening_s: float
    """From the SIGTERM to the new process listening on the port."""
    old_cpu: float
    """CPU seconds the old process and the children it waited for used in all, read at its exit."""
    complaint: str | None
    """Said when the old process had to be killed."""
    refused_starts: list[str]
    """The last log line of each new process that exited at once (the port still taken) before one listened."""


class ServerFailed(RuntimeError):
    """A server (or its redis-server) did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def environment() -> dict[str, str]:
    """The server's environment: ours without ``CHAT_*``, with ``scripts/`` importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the harness dies, however it dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Process:
    """A child process whose output goes to a file, ready once it listens on its port."""

    def __init__(self, argv: list[str], port: int, log: Path, cpus: frozenset[int] | None = None) -> None:
        self.argv = argv
        self.port = port
        self.log_path = log
        self.started_at = time.monotonic()
        with log.open("wb") as output:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment(),
                cwd=ROOT,
                preexec_fn=die_with_parent,
            )
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.popen.pid, cpus)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_listening(self, timeout: float) -> bool:
        """True once the process listens on its port; False if it exited first; raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                return False
            if procfs.listens_on(self.pid, self.port):
                return True
            time.sleep(LISTEN_POLL)
        command = " ".join(self.argv[:3])
        raise ServerFailed(f"{command} not listening on port {self.port} after {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> str | None:
        """SIGTERM, then SIGKILL after ``timeout``; a complaint if it had to kill."""
        if self.popen.poll() is not None:
            return None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
            return None
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)
            return f"pid {self.pid} ignored SIGTERM for {timeout:.0f} s and was killed"

    def stop_measured(self, timeout: float = STOP_TIMEOUT) -> tuple[float, str | None]:
        """``stop``, waiting for its worker processes too; the CPU seconds the whole tree used in all.

        The process's own time and that of the children it waited for are read from its exit
        status's /proc entry before it is reaped; a worker it did not wait for counts with the last
        time read while it ran (every ``EXIT_POLL`` s). A complaint if anything had to be killed.
        """
        if self.popen.poll() is not None:
            return 0.0, None
        workers: dict[int, float] = {}
        self.popen.send_signal(signal.SIGTERM)
        complaint = None
        deadline = time.monotonic() + timeout
        while not exited(self.pid):
            for pid in procfs.tree(self.pid)[1:]:
                workers[pid] = max(workers.get(pid, 0.0), procfs.cpu_seconds(pid))
            if complaint is None and time.monotonic() > deadline:
                self.popen.kill()
                complaint = f"pid {self.pid} ignored SIGTERM for {timeout:.0f} s and was killed"
            time.sleep(EXIT_POLL)
        own, waited = procfs.cpu_seconds(self.pid), procfs.cpu_seconds_with_children(self.pid)
        self.popen.wait(timeout)
        while any(procfs.running(pid) for pid in workers):  # workers the process left behind
            for pid in workers:
                workers[pid] = max(workers[pid], procfs.cpu_seconds(pid))
            if time.monotonic() > deadline + timeout:
                for pid in workers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                complaint = complaint or f"workers of pid {self.pid} outlived it for {timeout:.0f} s and were killed"
                break
            time.sleep(EXIT_POLL)
        return max(waited, own + sum(workers.values())), complaint


def exited(pid: int) -> bool:
    """Whether a child process exited, without reaping it (its /proc entry stays readable)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def start_listening(
    argv_for: Callable[[int], list[str]], log: Path, timeout: float, cpus: frozenset[int] | None = None
) -> Process:
    """Start a process on a free port, retrying when another process took the port first."""
    logs: list[str] = []
    for _ in range(BIND_ATTEMPTS):
        port = free_port()
        process = Process(argv_for(port), port, log, cpus)
        try:
            ready = process.wait_listening(timeout)
        except ServerFailed:
            process.stop()
            raise
        if ready:
            return process
        process.stop()
        logs.append(process.log())
        if BIND_CLASH not in process.log().lower():
            break
    raise ServerFailed("did not start:\n" + "\n---\n".join(logs))


class ArgvBuilder:
    """``argv_for(port)`` for one kind of server."""

    def __init__(self, kind: Kind, options: ServerOptions, redis_url: str | None, store_url: str | None = None) -> None:
        self.kind = kind
        self.options = options
        self.redis_url = redis_url
        self.store_url = store_url

    def __call__(self, port: int) -> list[str]:
        options = self.options
        host = ["--host", "127.0.0.1", "--port", str(port), "--log-level", options.log_level]
        if self.kind.chat_args is not None:
            argv = [sys.executable, "-m", "chat", *host, "--rate-per-second", "0", "--max-connections", "1000000"]
            # The clients come from many loopback addresses (50 connections each, scenarios.source_address),
            # within chat's per-address defaults; the limits are off all the same, so that a lower default
            # never refuses the benchmark.
            argv += ["--max-connections-per-ip", "0", "--handshake-rate-per-ip", "0"]
            if self.redis_url is not None:
                argv += ["--backend", self.redis_url]
            if self.store_url is not None:
                argv += ["--store", self.store_url]
            if options.deflate:
                argv.append("--ws-per-message-deflate")
            return argv + list(self.kind.chat_args) + list(options.chat_args)
        module = {"seed": "benchmark.seed_server", "raw": "benchmark.raw_server"}[self.kind.name]
        return [sys.executable, "-m", module, *host]


class RedisArgv:
    """``argv_for(port)`` for a redis-server without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __call__(self, port: int) -> list[str]:
        binary = shutil.which("redis-server") or "redis-server"
        return [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]


class Server:
    """One running server under test (and its redis-server, and its store)."""

    def __init__(self, kind: Kind, options: ServerOptions, label: str) -> None:
        """Start it; a kind with a durable store gets a fresh one, removed on ``stop``."""
        self.kind = kind
        self.redis: Process | None = None
        self.store: ScratchStore | None = None
        self.starts = 1
        self.opened = 0
        """Connections the clients opened to it so far (they come from ever new source addresses)."""
        options.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if kind.store is not None:
                self.store = ScratchStore(kind.store, options.workdir)
            redis_url = self.start_redis(options, label) if kind.redis else None
            store_url = self.store.url if self.store is not None else None
            self.argv_for = ArgvBuilder(kind, options, redis_url, store_url)
            self.log_stem = options.workdir / f"{kind.name}-{label}"
            self.cpus = options.cpus
            self.process = start_listening(self.argv_for, Path(f"{self.log_stem}.log"), START_TIMEOUT, self.cpus)
        except BaseException:
            self.stop_helpers()
            raise

    def start_redis(self, options: ServerOptions, label: str) -> str:
        """Start the server's own redis-server; its URL."""
        if not redis_available():
            raise ServerFailed("no redis-server on PATH")
        redis_dir = options.workdir / f"redis-{label}"
        redis_dir.mkdir(parents=True, exist_ok=True)
        redis_log = options.workdir / f"redis-{label}.log"
        try:
            self.redis = start_listening(RedisArgv(redis_dir), redis_log, START_TIMEOUT)
        except ServerFailed as exc:
            raise ServerFailed(f"redis-server {exc}") from None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def alive(self) -> bool:
        return self.process.popen.poll() is None

    def cpu_seconds(self) -> tuple[float, float, float]:
        """CPU time so far of the server's process tree, its redis-server and the PostgreSQL backends serving it."""
        redis = procfs.cpu_seconds(self.redis.pid) if self.redis is not None else 0.0
        store = self.store.cpu_seconds() if self.store is not None else 0.0
        return procfs.tree_cpu_seconds([self.process.pid]), redis, store

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` of the server's process tree (redis-server not included)."""
        return procfs.tree_memory(self.process.pid)

    def log(self) -> str:
        return self.process.log()

    def stop_process(self) -> str | None:
        """Stop the server's process only (its redis-server and store stay); a complaint if it had to be killed."""
        return self.process.stop()

    def start_process(self) -> None:
        """Start the server's process again, on the same redis-server and store (on a new port, with a new log)."""
        self.starts += 1
        log = Path(f"{self.log_stem}-{self.starts}.log")
        self.process = start_listening(self.argv_for, log, START_TIMEOUT, self.cpus)

    def restart_in_place(self) -> Restarted:
        """Stop the server's process (SIGTERM) and start it again on the same port, as an operator restarts it.

        Its redis-server and store stay. The new process gets a new log; a start that finds the port
        still taken tries again until ``START_TIMEOUT``.
        """
        started = time.monotonic()
        old_cpu, complaint = self.process.stop_measured()
        exited_at = time.monotonic()
        self.starts += 1
        log = Path(f"{self.log_stem}-{self.starts}.log")
        deadline = exited_at + START_TIMEOUT
        refused: list[str] = []
        while True:
            self.process = Process(self.argv_for(self.port), self.port, log, self.cpus)
            if self.process.wait_listening(max(LISTEN_POLL, deadline - time.monotonic())):
                break
            output = self.process.log()
            if BIND_CLASH not in output.lower() or time.monotonic() >= deadline:
                raise ServerFailed(f"did not start again on port {self.port}:\n{output}")
            refused.append(output.splitlines()[-1] if output else "")
            time.sleep(LISTEN_POLL)
        return Restarted(exited_at - started, time.monotonic() - started, old_cpu, complaint, refused)

    def stop(self) -> str | None:
        complaint = self.process.stop()
        return self.stop_helpers() or complaint

    def stop_helpers(self) -> str | None:
        """Stop the redis-server and remove the store; a complaint if the store could not be removed."""
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        store, self.store = self.store, None
        if store is not None:
            try:
                store.remove()
            except StoreFailed as exc:
                return f"store not removed: {exc}"
        return None
