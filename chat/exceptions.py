"""Every error the server raises on purpose, under one root.

ChatError
 ├── ConfigError               settings that cannot work (raised at startup)
 ├── RequestError              answered with an ``error`` frame; the connection stays open
 │    ├── BadRequest           bad_request
 │    ├── TooLarge             too_large
 │    ├── RateLimited          rate_limited
 │    ├── Unsupported          unsupported
 │    ├── Unavailable          unavailable (the backend cannot serve right now)
 │    └── Forbidden            forbidden
 └── ConnectionRefused         the connection is refused or closed with ``close_code``
      ├── InvalidJoin          1008, or HTTP 403 before accept
      ├── FrameTooLarge        1009
      └── ServerBusy           1013
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


class Forbidden(RequestError):
    code = "forbidden"


class ConnectionRefused(ChatError):
    """The connection is refused (before accept) or closed (after) with ``close_code`` and the detail."""

    close_code: ClassVar[int]
    http_status: ClassVar[int]


class InvalidJoin(ConnectionRefused):
    close_code = 1008
    http_status = 403


class FrameTooLarge(ConnectionRefused):
    close_code = 1009
    http_status = 413


class ServerBusy(ConnectionRefused):
    close_code = 1013
    http_status = 503
