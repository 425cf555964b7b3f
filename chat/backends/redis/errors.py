"""How Redis's failures reach callers: as ``Unavailable``, with the failure as its cause."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from chat.exceptions import Unavailable

UNAVAILABLE = "backend unavailable"


@contextmanager
def unavailable(detail: str = UNAVAILABLE) -> Iterator[None]:
    """Raise ``Unavailable(detail)`` from a ``RedisError`` or ``OSError`` (timeouts too) of the block."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable(detail) from exc
