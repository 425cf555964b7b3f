"""``create_app(settings)``: the Starlette app with the WebSocket route, ``/healthz``, the web client, the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from chat.api import operator_routes
from chat.chat import Chat, chat_of
from chat.endpoint import ChatEndpoint, SocketEndpoint
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


def create_app(settings: Settings | None = None, hooks: object = None) -> Starlette:
    """A complete chat app; mount it anywhere (``Mount("/chat", app=create_app())``).

    ``hooks``: a ``chat.Hooks``, or any object with some of its methods (``authenticate``, ``can_join``,
    ``on_message``, ``joined``, ``left``, ``published``): see ``chat.hooks``.
    """
    chat = Chat(settings, hooks=hooks)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await chat.start()
        try:
            yield
        finally:
            await chat.stop()

    app = ChatApp(
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


class ChatApp(Starlette):
    """Starlette, with a chat socket handed to its endpoint at once when no middleware or handler was added.

    A WebSocket gets nothing from Starlette's own middleware (the error middleware passes it on, the
    exception middleware has no handler a chat endpoint uses), yet each layer's coroutine frame stays
    alive as long as the connection: ~2.5 KiB of an idle connection's memory. Any other scope, or any
    app given middleware or exception handlers, goes the usual way.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not (self.user_middleware or self.exception_handlers):
            route = self._socket_route(scope)
            if route is not None:
                await route.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _socket_route(self, scope: Scope) -> WebSocketRoute | None:
        """The route the router would pick for a WebSocket, if it leads to a chat endpoint; the scope then has what
        the router would add to it."""
        for route in self.router.routes:
            match, child_scope = route.matches(scope)
            if match is not Match.FULL:
                continue
            if isinstance(route, WebSocketRoute) and route.app is route.endpoint and _chat_endpoint(route.endpoint):
                scope["app"] = self
                scope.setdefault("router", self.router)
                scope["route"] = route
                scope.update(child_scope)
                return route
            break
        return None


def _chat_endpoint(endpoint: object) -> bool:
    return isinstance(endpoint, type) and issubclass(endpoint, SocketEndpoint)


async def healthz(request: Request) -> JSONResponse:
    """200 with the live figures while the backend can serve, 503 ``degraded`` while it cannot."""
    healthy, body = await chat_of(request.scope).health()
    return JSONResponse(body, status_code=200 if healthy else 503)


async def client(request: Request) -> FileResponse:
    """The single-page web client; its files load relative to wherever the app is mounted."""
    return FileResponse(STATIC / "index.html", headers=CLIENT_HEADERS)
