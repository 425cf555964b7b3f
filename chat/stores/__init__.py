"""Stores by URL scheme, imported only when used: ``sqlite:///PATH`` and ``postgresql://...``."""

from __future__ import annotations

from urllib.parse import urlsplit

from chat.exceptions import ConfigError
from chat.settings import Settings
from chat.stores.base import SCHEMA_VERSION, Committed, Store

__all__ = ["DURABLE_STORES", "SCHEMA_VERSION", "Committed", "Store", "open_store"]

DURABLE_STORES = ("sqlite", "postgresql", "postgres")
"""URL schemes of the stores that keep every message (``open_store``)."""


def open_store(url: str, settings: Settings) -> Store:
    """The durable store ``url`` names (``sqlite:///PATH``, ``postgresql://USER@HOST:PORT/DB``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from chat.stores.sqlite import SqliteStore

        return SqliteStore(url, settings)
    if scheme in ("postgresql", "postgres"):
        from chat.stores.postgresql import PostgresStore

        return PostgresStore(url, settings)
    raise ConfigError(f"unknown store {url!r}: use memory://, sqlite:///PATH, postgresql://... or redis://...")
