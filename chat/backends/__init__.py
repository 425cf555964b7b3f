"""Backends by URL scheme, imported only when used."""

from __future__ import annotations

from urllib.parse import urlsplit

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.exceptions import ConfigError
from chat.settings import Settings

__all__ = ["Backend", "Deliver", "PublishDone", "RoomSummary", "Snapshot", "open_backend"]


def open_backend(settings: Settings) -> Backend:
    """The backend that ``settings.backend`` names (``memory://`` or ``redis://host:port/db``)."""
    scheme = urlsplit(settings.backend).scheme
    if scheme == "memory":
        from chat.backends.memory import MemoryBackend

        return MemoryBackend(settings.backend, settings)
    if scheme in ("redis", "rediss", "unix"):
        from chat.backends.redis import RedisBackend

        return RedisBackend(settings.backend, settings)
    raise ConfigError(f"unknown backend {settings.backend!r}: use memory:// or redis://host:port/db")
