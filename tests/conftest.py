"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

from chat.settings import Settings

BACKENDS = ["memory://"]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as under uvicorn."""
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """Every backend the protocol suite runs against."""
    return str(request.param)


@pytest.fixture
def settings(backend_url: str) -> Settings:
    """Default settings on the backend under test (tests replace fields as they need)."""
    return Settings(backend=backend_url)
