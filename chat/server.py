"""Running under uvicorn: the server process, and a websocket protocol that never holds a stuck socket.

uvicorn's own close waits for a send buffer to drain, which never happens when the peer stopped
reading; its keepalive then closes the transport gracefully, which waits for the same buffer.
``ChatWebSocketProtocol`` queues the close frame regardless and aborts the transport if the
connection is still open ``close_timeout`` seconds after the app finished with it.
"""

from __future__ import annotations

import copy
import os
import socket
import struct
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from chat.exceptions import ConfigError
from chat.settings import Settings

SHUTDOWN_GRACE = 3.0


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol, releasing sockets whose peer stopped reading."""

    async def send(self, message: Any) -> None:
        """As uvicorn's, except that a close never waits for a send buffer that cannot drain."""
        closing = message["type"] == "websocket.close" and self.handshake_complete and not self.close_sent
        if closing and not self.writable.is_set():
            self.writable.set()
        await super().send(message)
        if closing:
            self._abort_later(self.close_timeout + 1.0)

    async def run_asgi(self) -> None:
        """Run the app; once it is done with the connection, give the close at most ``close_timeout``."""
        await super().run_asgi()
        self._abort_later(self.close_timeout + 1.0)

    def keepalive_timeout(self) -> None:
        """The peer did not answer a ping in time: fail the connection and do not wait for its buffer."""
        super().keepalive_timeout()
        self._abort_later(1.0)

    def shutdown(self) -> None:
        """Close with 1012 as uvicorn does, and abort what is still open after a short grace."""
        super().shutdown()
        self._abort_later(SHUTDOWN_GRACE)

    def _abort_later(self, delay: float) -> None:
        self.loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        if not self.disconnected and self.transport is not None:
            # Linger 0: close() resets the connection and drops the unsent data. Without it the kernel
            # keeps the socket (and its send buffer) queueing a FIN behind data the peer never reads.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()


def run(settings: Settings) -> None:
    """Serve the app with uvicorn until SIGTERM or Ctrl-C; workers rebuild ``settings`` from ``CHAT_*``."""
    if settings.workers > 1 and settings.backend.startswith("memory:"):
        raise ConfigError("--workers above 1 needs a shared backend (redis://...): with memory:// rooms would split")
    os.environ.update(settings.to_env())
    uvicorn.run(
        "chat.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        ws="chat.server:ChatWebSocketProtocol",
        ws_max_size=settings.max_frame,
        ws_ping_interval=settings.ws_ping_interval or None,
        ws_ping_timeout=settings.ws_ping_timeout or None,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE) + 2,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        lifespan="on",
    )


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the ``chat`` loggers printed the same way."""
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["chat"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
