"""A real ``python -m chat`` process on a free loopback port, its log, and how to stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx2 as httpx
import pytest

READY_LINE = "Uvicorn running on"
"""uvicorn logs this once the socket listens; "Application startup complete" comes before the bind, too early
to connect. Both are INFO lines, so a server started with ``log_level`` above info never looks ready."""
BIND_CLASH = "address already in use"
START_TIMEOUT = 20.0
"""The most a server may take to print its readiness line."""
STOP_TIMEOUT = 10.0
"""The most a server may take to exit after SIGTERM before it is killed."""
BIND_ATTEMPTS = 5
SERVER_FOLDERS = tempfile.TemporaryDirectory(prefix="chat-e2e-")
"""Where servers started without a folder of the test's get one each; removed when the test run ends."""
FORBIDDEN_IN_LOG = "Traceback"
"""A server whose log holds this fails the test that ran it."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def command_line(port: int, backend_url: str, flags: Mapping[str, object]) -> list[str]:
    """``python -m chat`` with one option per flag: ``queue_bytes=65536`` -> ``--queue-bytes 65536``.

    A flag set to None is left out (``store=None``: the command line's default store). On memory://
    the store is memory:// unless a flag names it: the suites written for memory test memory.
    """
    argv = [sys.executable, "-m", "chat", "--host", "127.0.0.1", "--port", str(port), "--backend", backend_url]
    if backend_url.startswith("memory:") and "store" not in flags:
        argv += ["--store", "memory://"]
    for name, value in flags.items():
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [option, str(value)]
    return argv


class ServerProcess:
    """One server process: its port, its merged stdout/stderr log, and its lifecycle."""

    def __init__(self, argv: list[str], port: int, env: Mapping[str, str], cwd: str | None = None) -> None:
        self.port = port
        self.argv = argv
        self.cwd = cwd
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._ready = False
        self._eof = False
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read_log, name=f"chat-log-{port}", daemon=True)
        self._reader.start()

    # --- the log ---------------------------------------------------------------------------------

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            with self._changed:
                self._lines.append(line)
                if READY_LINE in line:
                    self._ready = True
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        with self._changed:
            return "".join(self._lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Block until the readiness line (True) or the end of the log (False); raise after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready or self._eof, timeout):
                raise TimeoutError(f"server on port {self.port} not ready after {timeout} s:\n{''.join(self._lines)}")
            return self._ready

    def wait_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Block until ``text`` appeared ``count`` times in the log; raise after ``timeout``, or if the log
        ended (the process exited) before that."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.log_count(text) >= count or self._eof, timeout):
                raise TimeoutError(f"{text!r} not logged {count} times in {timeout} s:\n{''.join(self._lines)}")
            if (seen := self.log_count(text)) < count:
                log = "".join(self._lines)
                raise AssertionError(f"the log ended with {text!r} logged {seen} of {count} times:\n{log}")

    def log_count(self, text: str) -> int:
        """How many lines read so far contain ``text``."""
        with self._changed:  # a reentrant lock: ``wait_log`` calls this while holding it
            return sum(text in line for line in self._lines)

    # --- talking to it ---------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, room: str, **query: str | int) -> str:
        """The WebSocket URL of ``room`` with the given query parameters (``name=``, ``since=``, ``epoch=``)."""
        suffix = "?" + urlencode({key: str(value) for key, value in query.items()}) if query else ""
        return f"ws://{self.base}/ws/{room}{suffix}"

    async def healthz(self) -> dict[str, Any]:
        """The ``/healthz`` body (asserting a 200)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"http://{self.base}/healthz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body

    # --- stopping it -----------------------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM if the process still runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if the process still runs after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> str | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; returns a complaint if it had to kill."""
        complaint = None
        self.terminate()
        if self.wait_exit(STOP_TIMEOUT) is None:
            complaint = f"server on port {self.port} ignored SIGTERM for {STOP_TIMEOUT} s and was killed"
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return complaint


def stop_and_check(servers: Iterable[ServerProcess]) -> list[str]:
    """Stop every server; the problems found: a server that had to be killed, or a traceback in a log."""
    problems = []
    for server in servers:
        complaint = server.stop()
        if complaint:
            problems.append(complaint)
        if FORBIDDEN_IN_LOG in server.log:
            problems.append(f"server on port {server.port} logged a traceback:\n{server.log}")
    return problems


class StartServer(Protocol):
    """Start a server on the backend under test; ``flags`` become CLI options, ``env`` extra variables."""

    def __call__(self, *, env: Mapping[str, str] | None = None, **flags: object) -> ServerProcess: ...


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``CHAT_*`` variables, plus ``env``."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(env or {})
    return environ


def launch(
    backend_url: str, flags: Mapping[str, object], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> ServerProcess:
    """Start a server on a free port (in ``cwd``: where a relative store path points; by default a new
    temporary folder), retrying when another process grabbed the port first."""
    cwd = cwd or tempfile.mkdtemp(prefix="server-", dir=SERVER_FOLDERS.name)
    environ = environment(env)
    logs = []
    for _ in range(BIND_ATTEMPTS):
        port = free_port()
        server = ServerProcess(command_line(port, backend_url, flags), port, environ, cwd)
        try:
            ready = server.wait_ready()
        except TimeoutError:
            server.stop()
            raise
        if ready:
            return server
        server.stop()
        logs.append(server.log)
        if BIND_CLASH not in server.log:
            break
    raise RuntimeError("the chat server did not start:\n" + "\n---\n".join(logs))


def refused_start(
    backend_url: str, flags: Mapping[str, object], cwd: str, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a server that should refuse to start, and wait for its exit (its status, stdout and stderr);
    ``subprocess.TimeoutExpired`` if it still runs after ``timeout`` seconds (it is killed then)."""
    argv = command_line(free_port(), backend_url, flags)
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=environment(), cwd=cwd, timeout=timeout
    )


def servers_on(
    backend_url: str,
    defaults: Mapping[str, object] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[StartServer]:
    """For a fixture to ``yield from``: a factory of servers on ``backend_url`` (each call's flags over
    ``defaults``, its ``env`` over ``base_env``; all in ``cwd`` if given, else each in a folder of its
    own); afterwards each server is stopped, and the test fails if one had to be killed or logged a
    traceback."""
    servers: list[ServerProcess] = []

    def start(*, env: Mapping[str, str] | None = None, **flags: object) -> ServerProcess:
        server = launch(backend_url, {**(defaults or {}), **flags}, {**(base_env or {}), **(env or {})}, cwd)
        servers.append(server)
        return server

    yield start
    problems = stop_and_check(servers)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
