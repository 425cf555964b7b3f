"""Every error the server raises on purpose, under one root.

ChatError
 ├── ConfigError               settings that cannot work (raised at startup)
 ├── ApiError                  an operator's API request answered with HTTP ``status`` and a JSON error
 ├── Refuse                    raised by a host's hook to refuse, with the detail the member sees (``chat.hooks``)
 ├── HookFailed                a host's hook raised or took too long (the member gets ``unavailable``)
 ├── RequestError              answered with an ``error`` frame (with the ``room`` it named); the connection stays open
 │    ├── BadRequest           bad_request
 │    ├── Forbidden            forbidden (``/ws``: a join the room name or the token's ``rooms`` do not allow)
 │    ├── TooManyRooms         too_many_rooms (``/ws``: a join past ``max_rooms_per_connection``)
 │    ├── TooLarge             too_large
 │    ├── RateLimited          rate_limited
 │    ├── Unsupported          unsupported
 │    └── Unavailable          unavailable (the backend cannot serve right now)
 └── ConnectionClosed          the connection is closed with ``close_code`` (a ``CloseCode``) and the detail
      ├── SlowConsumer         1013: its buffer would overflow, or its socket took nothing for too long
      ├── PolicyViolation      1008 after accept: bad frames, rate limit abuse, token expired
      │    └── Removed         1008 ``removed`` by the operator (``/ws``: a ``left`` frame, that room only)
      ├── ServiceRestart       1012: the room restarted (its history is gone); rejoin to learn it
      │                        (``/ws``: a ``left`` frame, that room only)
      ├── GoingAway            1001: the server shuts down
      └── ConnectionRefused    refused before accept (HTTP ``http_status``) or closed after with ``close_code``
           ├── InvalidJoin          1008, or HTTP 403 before accept (bad room or name, origin, rooms claim)
           │    └── InvalidToken    (chat.auth) missing, expired, badly signed or unusable token
           ├── FrameTooLarge        1009
           ├── ServerBusy           1013 (server full, or the backend could not take the join)
           │    └── HookUnavailable 1013, or HTTP 503 before accept (a host's hook failed)
           └── TooManyConnections   1013, or HTTP 429 before accept (per-address limits)

Every close code the server sends is one of websockets' ``CloseCode`` members, named here once.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from websockets.frames import CloseCode

ErrorCode = Literal[
    "bad_request", "too_large", "rate_limited", "unsupported", "unavailable", "forbidden", "too_many_rooms"
]


class ChatError(Exception):
    """The root of every error raised on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(ChatError):
    """A setting has a value the server cannot work with."""


class ApiError(ChatError):
    """An operator's API request the server refuses: HTTP ``status``, JSON ``{"type":"error","code","detail"}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


class Refuse(ChatError):
    """Raise it in a host's hook (``authenticate``, ``can_join``, ``on_message``) to refuse, saying why: the member
    gets ``forbidden`` with this detail."""


class HookFailed(ChatError):
    """A host's hook raised (anything but ``Refuse``) or took longer than ``hook_timeout``: already logged."""

    def __init__(self, hook: str) -> None:
        super().__init__(f"{hook} failed: try again later")
        self.hook = hook


class RequestError(ChatError):
    """A client frame the server refuses; the client gets an ``error`` frame and stays connected."""

    code: ClassVar[ErrorCode]

    def __init__(self, detail: str, ref: str | int | None = None, room: str | None = None) -> None:
        super().__init__(detail)
        self.ref = ref
        self.room = room
        """The room the refused request named (echoed in the error frame), if it named one."""


class BadRequest(RequestError):
    code = "bad_request"


class Forbidden(RequestError):
    code = "forbidden"


class TooManyRooms(RequestError):
    code = "too_many_rooms"


class TooLarge(RequestError):
    code = "too_large"


class RateLimited(RequestError):
    code = "rate_limited"


class Unsupported(RequestError):
    code = "unsupported"


class Unavailable(RequestError):
    code = "unavailable"


class ConnectionClosed(ChatError):
    """Why a connection is closed: ``close_code`` and the detail (the close reason), and its metrics label."""

    close_code: ClassVar[CloseCode]
    reason = "closed"
    """What the close is counted as (a metrics label)."""
    room_only: ClassVar[bool] = False
    """On a multi-room connection (``/ws``) it takes the member out of its one room (a ``left`` frame with
    ``reason``), not the socket down."""

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


class SlowConsumer(ConnectionClosed):
    close_code = CloseCode.TRY_AGAIN_LATER
    reason = "slow_consumer"


class PolicyViolation(ConnectionClosed):
    """Closed after accept for what the member did (``reason``: ``chat_policy_closes``'s label)."""

    close_code = CloseCode.POLICY_VIOLATION


class Removed(PolicyViolation):
    """The operator removed the member from a room."""

    reason = "removed"
    room_only = True


class ServiceRestart(ConnectionClosed):
    close_code = CloseCode.SERVICE_RESTART
    reason = "restart"
    room_only = True


class GoingAway(ConnectionClosed):
    close_code = CloseCode.GOING_AWAY
    reason = "shutdown"


class ConnectionRefused(ConnectionClosed):
    """The connection is refused (before accept) or closed (after) with ``close_code`` and the detail."""

    http_status: ClassVar[int]
    code: ClassVar[ErrorCode] = "forbidden"
    reason = "invalid_join"


class InvalidJoin(ConnectionRefused):
    close_code = CloseCode.POLICY_VIOLATION
    http_status = 403


class FrameTooLarge(ConnectionRefused):
    close_code = CloseCode.MESSAGE_TOO_BIG
    http_status = 413


class ServerBusy(ConnectionRefused):
    close_code = CloseCode.TRY_AGAIN_LATER
    http_status = 503
    reason = "server_full"


class HookUnavailable(ServerBusy):
    """A host's hook failed while the connection was being opened."""

    code = "unavailable"
    reason = "hook_failed"


class TooManyConnections(ConnectionRefused):
    close_code = CloseCode.TRY_AGAIN_LATER
    http_status = 429
    code = "rate_limited"
    reason = "connections_per_ip"
