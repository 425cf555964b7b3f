"""Everything that knows uvicorn's internals: the protocol classes ``scripts/serve`` runs with.

- ``websocket``: ``ChatWebSocketProtocol``, direct writes and no stuck sockets;
- ``flusher``: one write per event-loop turn (or write delay) for every socket written to;
- ``standins``: lighter objects for uvicorn's per-connection queue and event;
- ``http``: ``ChatHttpProtocol``, a deadline and a size limit for each request head, and the
  upgrade handed over as httptools parsed it;
- ``handshake``: which upgrade requests can be answered from that parse.

Embedded under uvicorn, pass them as ``--ws chat.uvicorn:ChatWebSocketProtocol --http
chat.uvicorn:ChatHttpProtocol`` to get the fast path.
"""

from __future__ import annotations

from chat.uvicorn.http import ChatHttpProtocol
from chat.uvicorn.websocket import ChatWebSocketProtocol

__all__ = ["ChatHttpProtocol", "ChatWebSocketProtocol"]
