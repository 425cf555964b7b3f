"""The servers under test: how each one is started on a free loopback port, measured, and stopped.

``chat``, ``chat-redis`` and ``chat-delay`` are this project (``python -m chat``, with the
per-connection rate limit off and the connection cap out of the way); ``chat-redis`` also gets its
own redis-server, started here without persistence and counted in the server's CPU;
``chat-delay`` is ``chat`` with a 10 ms write delay (``--write-delay 0.01``). ``seed`` and ``raw`` are the references
beside this file. A server is ready once its own process holds the socket listening on its port
(read from /proc), so no log line is needed and every server can run at the same log level.
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

SCRIPTS = Path(__file__).resolve().parent.parent
ROOT = SCRIPTS.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
BIND_ATTEMPTS = 5
BIND_CLASH = "address already in use"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Kind:
    """One server the benchmark knows."""

    name: str
    acks: bool
    """Answers a message that has a ``ref`` with an ``ack`` (otherwise publishers count their echoes)."""
    redis: bool
    chat_args: tuple[str, ...] | None = None
    """This project's server (``python -m chat``) with these arguments of its own; None: a reference server."""


KINDS = {
    "chat": Kind("chat", acks=True, redis=False, chat_args=()),  # memory backend
    "chat-redis": Kind("chat-redis", acks=True, redis=True, chat_args=()),
    "chat-delay": Kind("chat-delay", acks=True, redis=False, chat_args=("--write-delay", "0.01")),  # 10 ms
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
            time.sleep(0.05)
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

    def __init__(self, kind: Kind, options: ServerOptions, redis_url: str | None) -> None:
        self.kind = kind
        self.options = options
        self.redis_url = redis_url

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
    """One running server under test (and its redis-server)."""

    def __init__(self, kind: Kind, options: ServerOptions, label: str) -> None:
        self.kind = kind
        self.redis: Process | None = None
        self.opened = 0
        """Connections the clients opened to it so far (they come from ever new source addresses)."""
        options.workdir.mkdir(parents=True, exist_ok=True)
        redis_url = None
        if kind.redis:
            if not redis_available():
                raise ServerFailed("no redis-server on PATH")
            redis_dir = options.workdir / f"redis-{label}"
            redis_dir.mkdir(parents=True, exist_ok=True)
            redis_log = options.workdir / f"redis-{label}.log"
            try:
                self.redis = start_listening(RedisArgv(redis_dir), redis_log, START_TIMEOUT)
            except ServerFailed as exc:
                raise ServerFailed(f"redis-server {exc}") from None
            redis_url = f"redis://127.0.0.1:{self.redis.port}/0"
        try:
            self.process = start_listening(
                ArgvBuilder(kind, options, redis_url),
                options.workdir / f"{kind.name}-{label}.log",
                START_TIMEOUT,
                options.cpus,
            )
        except BaseException:
            if self.redis is not None:
                self.redis.stop()
            raise

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def alive(self) -> bool:
        return self.process.popen.poll() is None

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time so far of the server's process tree, and of its redis-server (0 without one)."""
        redis = procfs.cpu_seconds(self.redis.pid) if self.redis is not None else 0.0
        return procfs.tree_cpu_seconds([self.process.pid]), redis

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` of the server's process tree (redis-server not included)."""
        return procfs.tree_memory(self.process.pid)

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> str | None:
        complaint = self.process.stop()
        if self.redis is not None:
            self.redis.stop()
        return complaint
