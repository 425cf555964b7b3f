"""Backends by URL scheme, imported only when used."""

from __future__ import annotations

from urllib.parse import urlsplit

from chat.backends.base import Backend, Deliver, PublishDone, RoomSummary, Snapshot
from chat.exceptions import ConfigError
from chat.settings import Settings

__all__ = ["Backend", "Deliver", "PublishDone", "RoomSummary", "Snapshot", "open_backend"]


def open_backend(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names, recording in the store ``settings.store`` names.

    No store, or the backend's own URL, is the backend's own bounded history; SQLite or PostgreSQL wrap
    it in a ``StoredBackend``.
    """
    backend = _open_relay(settings)
    if settings.store in ("", settings.backend):
        return backend
    if urlsplit(settings.store).scheme in ("memory", "redis", "rediss", "unix"):
        raise ConfigError(
            f"store {settings.store!r} cannot record for backend {settings.backend!r}: "
            "name the backend's own URL, sqlite:///PATH or postgresql://..., or leave the store unset"
        )
    from chat.backends.stored import StoredBackend
    from chat.stores import open_store

    return StoredBackend(backend, open_store(settings.store, settings))


def _open_relay(settings: Settings) -> Backend:
    scheme = urlsplit(settings.backend).scheme
    if scheme == "memory":
        from chat.backends.memory import MemoryBackend

        return MemoryBackend(settings.backend, settings)
    if scheme in ("redis", "rediss", "unix"):
        from chat.backends.redis import RedisBackend

        return RedisBackend(settings.backend, settings)
    raise ConfigError(f"unknown backend {settings.backend!r}: use memory:// or redis://host:port/db")
