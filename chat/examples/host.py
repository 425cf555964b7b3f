"""A host app with its own users: they sign in with a form, and chat, mounted at /chat, knows them by their session.

Run it with ``uvicorn chat.examples.host:app`` (sessions and forms need ``itsdangerous`` and
``python-multipart``), sign in at http://127.0.0.1:8000/, then open http://127.0.0.1:8000/chat/.
"""

import html
import os
import re

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.websockets import WebSocket

import chat

BLOCKED = re.compile(r"\b(darn|heck)\b", re.IGNORECASE)


class HostHooks:
    """Members are the signed-in users; guests get 403. Mild words are starred, links refused."""

    async def authenticate(self, websocket: WebSocket) -> chat.Identity | None:
        user = websocket.session.get("user")  # what login() stored: the host's own session cookie
        return None if user is None else chat.Identity(user["id"], user["name"])

    async def on_message(self, identity: chat.Identity, room: str, text: str) -> str | None:
        if "http://" in text or "https://" in text:
            raise chat.Refuse("links are not allowed here")
        return BLOCKED.sub(lambda word: "*" * len(word[0]), text)


async def home(request: Request) -> Response:
    user = request.session.get("user")
    if user is not None:
        name = html.escape(user["name"])
        return HTMLResponse(f'<p>Signed in as {name}. <a href="chat/?room=lobby">Chat</a></p>')
    return HTMLResponse('<form method="post" action="login"><input name="name"><button>Sign in</button></form>')


async def login(request: Request) -> Response:
    form = await request.form()
    name = str(form.get("name", "")).strip()[:32]
    if not name:
        return HTMLResponse("a name, please", status_code=400)
    request.session["user"] = {"id": "user-" + name.lower(), "name": name}
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", status_code=303)


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/chat", app=chat.create_app(hooks=HostHooks())),
    ],
    middleware=[Middleware(SessionMiddleware, secret_key=os.environ.get("SESSION_SECRET", "change me"))],
)
