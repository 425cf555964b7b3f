"""Running under uvicorn: the server process (workers, metrics directory, logging, the collector).

The protocol classes it serves with live in ``chat.uvicorn``; they are importable from here too
(``chat.server:ChatWebSocketProtocol``) for setups that name them there.
Every log handler redacts tokens (``chat.logs.RedactSecrets``): uvicorn prints request lines,
query and all.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG

from chat.exceptions import ConfigError
from chat.hooks import load_hooks
from chat.settings import Settings
from chat.stores import DURABLE_STORES, open_store
from chat.uvicorn import ChatHttpProtocol, ChatWebSocketProtocol
from chat.uvicorn.websocket import SHUTDOWN_GRACE

__all__ = ["ChatHttpProtocol", "ChatWebSocketProtocol", "log_config", "prepare_metrics_dir", "run", "serve_app"]

GC_YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (Python's default is 700; see ``serve_app``)."""


def serve_app() -> Starlette:
    """The app as ``python -m chat`` serves it (each worker builds its own), with the collector tuned.

    A server holds thousands of long-lived connections of ~100 objects each. With Python's default
    young threshold, frames and futures in flight are caught alive by young collections, promoted,
    and soon trigger full collections that walk every connection: 50-120 ms pauses every few
    seconds at 2000 busy members. Ten thousand allocations between young collections let them die
    young first; what was imported before serving is frozen out of collections altogether.
    """
    from chat.app import create_app  # not before run() has set up the metrics directory
    from chat.chat import chat_of

    app = create_app()
    trim_memory_every(chat_of({"app": app}).settings.trim_interval)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return app


def trim_memory_every(interval: float) -> asyncio.TimerHandle | None:
    """Every ``interval`` seconds, hand the C allocator's free memory back to the system (glibc's ``malloc_trim``);
    the first timer, or None where there is no glibc, no running loop or ``interval`` is 0.

    Python returns what it frees to the C allocator, and glibc keeps most of it in the process: after a
    burst of connections (each with its buffers, and with compression its zlib state, ~300 KiB) the
    resident memory stays at the burst's peak although nothing uses it. A trim costs a few milliseconds
    on a heap of a hundred MiB, well under a millisecond when there is little to give back.
    """
    trim = _malloc_trim()
    if trim is None or interval <= 0:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None

    def run() -> None:
        trim(0)
        loop.call_later(interval, run)

    return loop.call_later(interval, run)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def run(settings: Settings) -> None:
    """Serve the app with uvicorn until SIGTERM or Ctrl-C; workers rebuild ``settings`` from ``CHAT_*``."""
    if settings.workers > 1 and settings.backend.startswith("memory:"):
        raise ConfigError("--workers above 1 needs a shared backend (redis://...): with memory:// rooms would split")
    if settings.workers > 1 and settings.store.startswith("sqlite:"):
        raise ConfigError(
            "--workers above 1 needs a store every worker shares (postgresql://...): "
            "a SQLite file belongs to one process"
        )
    asyncio.run(check_store(settings))
    own_metrics_dir = None
    if settings.workers > 1 and settings.metrics and not settings.metrics_dir:
        own_metrics_dir = tempfile.mkdtemp(prefix="chat-metrics-")
        settings = settings.replace(metrics_dir=own_metrics_dir)
    if settings.metrics_dir:
        prepare_metrics_dir(settings.metrics_dir)
    os.environ.update(settings.to_env())
    load_hooks(settings.hooks)  # a hooks path that cannot work stops the server with one line, before any worker
    try:
        uvicorn.run(
            "chat.server:serve_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=functools.partial(ChatHttpProtocol, handshake_timeout=settings.handshake_timeout),  # type: ignore[arg-type]
            ws="chat.uvicorn:ChatWebSocketProtocol",
            ws_max_size=settings.max_frame,
            ws_ping_interval=settings.ws_ping_interval or None,
            ws_ping_timeout=settings.ws_ping_timeout or None,
            ws_per_message_deflate=settings.ws_per_message_deflate,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE) + 2,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            lifespan="on",
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


async def check_store(settings: Settings) -> None:
    """Open and close the store once before serving, so a store that cannot work stops the server with one line."""
    if urlsplit(settings.store).scheme in DURABLE_STORES:
        store = open_store(settings.store, settings)
        await store.start(lambda message, epoch: None)
        await store.stop()


def prepare_metrics_dir(path: str) -> None:
    """Make the workers' shared metrics directory, empty of an earlier run's files, and point prometheus-client at it.

    prometheus-client chooses its multiprocess mode from ``PROMETHEUS_MULTIPROC_DIR`` when it is
    first imported, so this runs before any worker starts.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the ``chat`` loggers printed the same way, and secrets redacted from every line."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["chat"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config.setdefault("filters", {})["redact"] = {"()": "chat.logs.RedactSecrets"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    return config
