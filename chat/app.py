"""``create_app(settings)``: the Starlette app with the WebSocket route, ``/healthz``, the web client, the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from chat.api import operator_routes
from chat.chat import Chat, chat_of
from chat.endpoint import ChatEndpoint
from chat.multiroom import MultiRoomEndpoint
from chat.settings import Settings

STATIC = Path(__file__).parent / "static"
"""The web client: plain HTML, CSS and JavaScript shipped in the package, no build step."""
CLIENT_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}


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
            WebSocketRoute("/ws", MultiRoomEndpoint),
            Route("/healthz", healthz),
            *operator_routes(chat.settings),
            Route("/", client),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.chat = chat
    return app


async def healthz(request: Request) -> JSONResponse:
    """200 with the live figures while the backend can serve, 503 ``degraded`` while it cannot."""
    healthy, body = await chat_of(request.scope).health()
    return JSONResponse(body, status_code=200 if healthy else 503)


async def client(request: Request) -> FileResponse:
    """The single-page web client; its files load relative to wherever the app is mounted."""
    return FileResponse(STATIC / "index.html", headers=CLIENT_HEADERS)
