"""``create_app(settings)``: the Starlette app with the WebSocket route, ``/healthz`` and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from chat.endpoint import ChatEndpoint, chat_of
from chat.hub import Chat
from chat.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    """A complete chat app; mount it anywhere (``Mount("/chat", app=create_app())``)."""
    chat = Chat(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await chat.start()
        try:
            yield
        finally:
            await chat.stop()

    app = Starlette(
        routes=[
            WebSocketRoute("/ws/{room}", ChatEndpoint),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )
    app.state.chat = chat
    return app


async def healthz(request: Request) -> JSONResponse:
    """200 with the live figures while the backend can serve, 503 ``degraded`` while it cannot."""
    healthy, body = await chat_of(request.scope).health()
    return JSONResponse(body, status_code=200 if healthy else 503)
