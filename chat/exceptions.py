"""Every error the server raises on purpose, under one root.

ChatError
 ├── ConfigError               settings that cannot work (raised at startup)
 ├── ApiError                  an operator's API request answered with HTTP ``status`` and a JSON error
 ├── RequestError              answered with an ``error`` frame; the connection stays open
 │    ├── BadRequest           bad_request
 │    ├── TooLarge             too_large
 │    ├── RateLimited          rate_limited
 │    ├── Unsupported          unsupported
 │    └── Unavailable          unavailable (the backend cannot serve right now)
 └── ConnectionRefused         the connection is refused or closed with ``close_code``
      ├── InvalidJoin          1008, or HTTP 403 before accept (bad room or name, origin, rooms claim)
      │    └── InvalidToken    (chat.auth) missing, expired, badly signed or unusable token
      ├── FrameTooLarge        1009
      ├── ServerBusy           1013
      └── TooManyConnections   1013, or HTTP 429 before accept (per-address limits)
"""

from __future__ import annotations

from typing import ClassVar, Literal

ErrorCode = Literal["bad_request", "too_large", "rate_limited", "unsupported", "unavailable", "forbidden"]


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


class RequestError(ChatError):
    """A client frame the server refuses; the client gets an ``error`` frame and stays connected."""

    code: ClassVar[ErrorCode]

    def __init__(self, detail: str, ref: str | int | None = None) -> None:
        super().__init__(detail)
        self.ref = ref


class BadRequest(RequestError):
    code = "bad_request"


class TooLarge(RequestError):
    code = "too_large"


class RateLimited(RequestError):
    code = "rate_limited"


class Unsupported(RequestError):
    code = "unsupported"


class Unavailable(RequestError):
    code = "unavailable"


class ConnectionRefused(ChatError):
    """The connection is refused (before accept) or closed (after) with ``close_code`` and the detail."""

    close_code: ClassVar[int]
    http_status: ClassVar[int]
    code: ClassVar[ErrorCode] = "forbidden"
    reason = "invalid_join"
    """What the refusal is counted as (a metrics label)."""

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason


class InvalidJoin(ConnectionRefused):
    close_code = 1008
    http_status = 403


class FrameTooLarge(ConnectionRefused):
    close_code = 1009
    http_status = 413


class ServerBusy(ConnectionRefused):
    close_code = 1013
    http_status = 503
    reason = "server_full"


class TooManyConnections(ConnectionRefused):
    close_code = 1013
    http_status = 429
    code = "rate_limited"
    reason = "connections_per_ip"
