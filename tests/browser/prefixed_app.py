"""A host app that mounts the chat under ``/chat``, as the README's embedding example does."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount

import chat


def create() -> Starlette:
    """``uvicorn --factory tests.browser.prefixed_app:create``."""
    return Starlette(routes=[Mount("/chat", app=chat.create_app(chat.Settings(rate_per_second=0)))])
