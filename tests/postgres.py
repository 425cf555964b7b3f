"""PostgreSQL for the tests: a fresh database of each test's own on the machine's server (127.0.0.1:5432)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

ADMIN_URL = os.environ.get("CHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
"""Where test databases are created (trust auth); CI makes sure a server answers there."""


def database_url(name: str) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}, and CI must run the PostgreSQL tests: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A new, empty database of this test's own, dropped afterwards."""
    name = "chat_test_" + secrets.token_hex(6)
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield database_url(name)
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
