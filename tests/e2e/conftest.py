"""Fixtures for the end-to-end tests: real server processes, stopped and checked after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server_process import ServerProcess, StartServer, servers_on


@pytest.fixture
def start_server(backend_url: str) -> Iterator[StartServer]:
    """A factory of server processes; each is stopped after the test, which fails if one had to be killed or
    logged a traceback."""
    yield from servers_on(backend_url)


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A server with the default settings."""
    return start_server()
