"""A private redis-server for tests, on a free loopback port, that tests may kill, freeze and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import IO

READY_LINE = b"Ready to accept connections"


def redis_binary() -> str | None:
    """The redis-server on PATH, if any."""
    return shutil.which("redis-server")


def copy_output(output: IO[bytes], log_path: Path, seen: list[bytes], ready: threading.Event) -> None:
    """Append ``output`` to ``log_path`` until it ends; keep it in ``seen`` and set ``ready`` once
    READY_LINE is in it, or once it ended without it (the server exited)."""
    with log_path.open("ab") as log:
        while chunk := os.read(output.fileno(), 65536):  # returns what is there; b"" once the server exited
            log.write(chunk)
            log.flush()
            if not ready.is_set():
                seen.append(chunk)
                if READY_LINE in b"".join(seen):
                    ready.set()
    ready.set()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process without persistence; ``restart`` brings it back empty on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._copier: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where everything redis-server prints goes (appended over restarts)."""
        return self.workdir / "redis-server.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it accepts connections; fail if it does not within ``timeout`` s.

        A thread copies the server's output to ``log_path`` until the server exits, so that a pipe nobody
        reads can never fill and block the server's logging (and with it the server).
        """
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.workdir), "--loglevel", "notice"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        ready = threading.Event()
        seen: list[bytes] = []
        self._copier = threading.Thread(
            target=copy_output, args=(self.process.stdout, self.log_path, seen, ready), daemon=True
        )
        self._copier.start()
        if ready.wait(timeout) and READY_LINE in b"".join(seen):
            return
        self.kill()
        lines = b"".join(seen).decode(errors="replace").splitlines(keepends=True)
        raise RuntimeError("redis-server did not start:\n" + "".join(lines[-20:]))

    def kill(self) -> None:
        """Kill the server at once (SIGKILL); its data is gone."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
            if self._copier is not None:
                self._copier.join(timeout=10)  # the output ends with the process
                self._copier = None
            if self.process.stdout is not None:
                self.process.stdout.close()
        self.process = None

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): connections stay open but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> str:
        """Run one command through redis-cli and return its output; raise if redis-cli fails.

        redis-cli fails when it cannot reach the server; an error reply is output like any other.
        """
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is not installed"
        result = subprocess.run([cli, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()
