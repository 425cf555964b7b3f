"""Fixtures for the end-to-end tests: real server processes, stopped and checked after each test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from .server_process import ServerProcess, StartServer, launch

FORBIDDEN_IN_LOG = "Traceback"


@pytest.fixture
def start_server(backend_url: str) -> Iterator[StartServer]:
    """A factory of server processes; each is stopped after the test, which fails if its log has a traceback."""
    servers: list[ServerProcess] = []

    def start(*, env: Mapping[str, str] | None = None, **flags: object) -> ServerProcess:
        server = launch(backend_url, flags, env)
        servers.append(server)
        return server

    yield start

    problems = []
    for server in servers:
        complaint = server.stop()
        if complaint:
            problems.append(complaint)
        if FORBIDDEN_IN_LOG in server.log:
            problems.append(f"server on port {server.port} logged a traceback:\n{server.log}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A server with the default settings."""
    return start_server()
