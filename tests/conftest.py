"""Fixtures shared by every test module."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chat.settings import Settings
from tests.postgres import postgres_url
from tests.redis_server import RedisServer, redis_binary
from tests.standins import serve

if TYPE_CHECKING:  # importing starlette.testclient warns about httpx; only the app tests need it
    from starlette.testclient import TestClient

BACKENDS = ["memory", "redis"]
__all__ = ["postgres_url"]  # a fixture for every test module


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as under uvicorn."""
    return "asyncio"


def require_redis() -> None:
    """Skip when redis-server is missing; under CI a missing redis-server is a failure."""
    if redis_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must run the Redis tests")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the tests that do not break it."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill, freeze or restart."""
    require_redis()
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """Every backend the protocol suite runs against (Redis starts empty for each test)."""
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("shared_redis")
    server.command("FLUSHALL")
    return server.url


@pytest.fixture
def settings(backend_url: str) -> Settings:
    """Default settings on the backend under test (tests replace fields as they need)."""
    return Settings(backend=backend_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on the default settings of the backend under test, its lifespan running."""
    with serve(settings) as test_client:
        yield test_client


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic garbage collector off for the test, after one collection: only reference counting frees anything."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
