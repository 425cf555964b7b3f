"""The client's exceptions, all under one root.

ClientError
 +-- Refused         the server refused the connection (handshake 403) or the join (``forbidden``...)
 +-- ServerError     an ``error`` frame answered a request (``too_large``, ``rate_limited``...)
 +-- OutboxFull      too many messages are waiting to be sent (the server is away)
 +-- MessageTooLarge the message could never fit in one frame
 +-- RoomClosed      the room was left, removed or its client closed
"""

from __future__ import annotations


class ClientError(Exception):
    """The root of every error the chat client raises."""


class Refused(ClientError):
    """The server refused us: retrying as is would be refused again. ``status`` is the HTTP status of a refused
    handshake (403), or None for a refused join; ``code`` the error code, ``detail`` the server's reason."""

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}" if status is None else f"HTTP {status} {code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


class ServerError(ClientError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class OutboxFull(ClientError):
    """A message could not be queued: ``max_outbox`` messages already wait for their ack."""


class MessageTooLarge(ClientError):
    """A message whose frame would pass the server's frame limit (it would close the connection)."""


class RoomClosed(ClientError):
    """The room is no longer joined: left, removed by the operator, refused, or its client closed."""
