"""The client processes as the harness sees them: spawn, send a command to each, collect every reply in time."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from benchmark import procfs
from benchmark.client import worker_main

Reply = dict[str, Any]
START_TIMEOUT = 30.0


class WorkerError(RuntimeError):
    """A client process failed a command, did not answer in time, or died."""


class WorkerPool:
    """``count`` client processes (spawned, so each has its own fresh interpreter and event loop)."""

    def __init__(self, count: int, pace: float, cpus: frozenset[int] | None = None) -> None:
        self.count = count
        self.pace = pace
        self.cpus = cpus
        self._ids = itertools.count(1)
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(self.count):
            parent, child = context.Pipe()
            name = f"bench-client-{index}"
            process = context.Process(target=worker_main, args=(child, self.pace), name=name, daemon=True)
            process.start()
            child.close()
            if self.cpus and process.pid is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(process.pid, self.cpus)
            self.processes.append(process)
            self.pipes.append(parent)
        self.call("stats", START_TIMEOUT)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid is not None]

    def cpu_seconds(self) -> float:
        """CPU time used so far by every client process."""
        return sum(procfs.cpu_seconds(pid) for pid in self.pids)

    def call(self, command: str, within: float, /, **arguments: Any) -> list[Reply]:
        """The same command to every process; their replies in process order."""
        return self.call_each(command, [arguments] * self.count, within)

    def call_one(self, index: int, command: str, arguments: dict[str, Any], timeout: float) -> Reply:
        """One command to process ``index`` alone."""
        return self._call(command, {index: arguments}, timeout)[0]

    def call_each(self, command: str, arguments: Sequence[dict[str, Any]], timeout: float) -> list[Reply]:
        """``arguments[i]`` to process ``i``; raises WorkerError unless every one answers ok within ``timeout``."""
        if len(arguments) != self.count:
            raise ValueError(f"{len(arguments)} argument sets for {self.count} client processes")
        return self._call(command, dict(enumerate(arguments)), timeout)

    def _call(self, command: str, arguments: dict[int, dict[str, Any]], timeout: float) -> list[Reply]:
        ident = next(self._ids)
        for index, args in arguments.items():
            try:
                self.pipes[index].send((ident, command, args))
            except OSError as exc:
                raise WorkerError(f"client process {index} gone ({command}): {exc}") from exc
        deadline = time.monotonic() + timeout
        replies: list[Reply] = []
        for index in arguments:
            pipe = self.pipes[index]
            while True:
                remaining = deadline - time.monotonic()
                try:
                    ready = pipe.poll(max(0.0, remaining))
                    if not ready:
                        raise WorkerError(f"client process {index} did not answer {command!r} within {timeout:.0f} s")
                    answer_id, reply = pipe.recv()
                except (EOFError, OSError) as exc:
                    code = self.processes[index].exitcode
                    raise WorkerError(f"client process {index} died during {command!r} (exit code {code})") from exc
                if answer_id == ident:
                    break  # older answers belong to commands that timed out
            if not reply.get("ok"):
                raise WorkerError(f"client process {index}, {command!r}: {reply.get('error')}")
            replies.append(reply)
        return replies

    def close(self) -> None:
        """Ask every process to quit; kill those that do not within a few seconds."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send((0, "quit", {}))
        for process in self.processes:
            process.join(3)
            if process.is_alive():
                process.kill()
                process.join(3)
        for pipe in self.pipes:
            pipe.close()
        self.processes = []
        self.pipes = []

    def restart(self) -> None:
        """Replace every process (after a timeout the state of a process is unknown)."""
        self.close()
        self._start()
