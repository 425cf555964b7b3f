"""A private redis-server for tests, on a free loopback port, that tests may kill, freeze and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

READY_LINE = "Ready to accept connections"


def redis_binary() -> str | None:
    """The redis-server on PATH, if any."""
    return shutil.which("redis-server")


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
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it accepts connections."""
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.workdir), "--loglevel", "notice"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if READY_LINE in line:
                os.set_blocking(self.process.stdout.fileno(), False)
                return
        self.kill()
        raise RuntimeError("redis-server did not start:\n" + "".join(seen[-20:]))

    def kill(self) -> None:
        """Kill the server at once (SIGKILL); its data is gone."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
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
        """Run one command through redis-cli and return its output."""
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is not installed"
        result = subprocess.run([cli, "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return result.stdout.strip()
