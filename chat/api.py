"""The operator's HTTP routes under the app's prefix: ``/metrics``, and ``/api/...`` when ``api_key`` is set.

Every ``/api`` request carries ``Authorization: Bearer <api_key>``. Errors are JSON
``{"type":"error","code":C,"detail":D}``: 401 ``unauthorized``, 404 ``not_found`` (unknown room or
member), 413 ``too_large``, 422 ``bad_request`` (malformed body or parameters), 503 ``unavailable``.
Every route works the same on every backend; on Redis, across every process.

    POST   /api/rooms/{room}/messages       {"text": T, "name"?: N}  ->  {"seq": S}
    GET    /api/rooms                       {"rooms": [{"room", "members"}...]}
    GET    /api/rooms/{room}                {"room", "members": [{"id", "name"}...]}
    GET    /api/rooms/{room}/history        ?before=&limit=  ->  {"room", "messages": [...]}
    DELETE /api/rooms/{room}/members/{id}   closes that member's connections with 1008 "removed"
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from chat.auth import SYSTEM_ID, bearer_credentials
from chat.chat import Chat, chat_of
from chat.exceptions import ApiError, InvalidJoin, RequestError, Unavailable
from chat.metrics import CONTENT_TYPE
from chat.protocol import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    ROOM_PATTERN,
    Member,
    check_text,
    encode_messages,
    parse_name,
)
from chat.settings import Settings

Handler = Callable[[Request, Chat], Awaitable[Response]]


def operator_routes(settings: Settings) -> list[BaseRoute]:
    """``/metrics`` unless turned off, and the ``/api`` routes when an API key is set."""
    routes: list[BaseRoute] = []
    if settings.metrics:
        routes.append(Route("/metrics", metrics, methods=["GET"]))
    if settings.api_key:
        routes += [
            Route("/api/rooms", list_rooms, methods=["GET"]),
            Route("/api/rooms/{room}", show_room, methods=["GET"]),
            Route("/api/rooms/{room}/history", room_history, methods=["GET"]),
            Route("/api/rooms/{room}/messages", post_message, methods=["POST"]),
            Route("/api/rooms/{room}/members/{member}", remove_member, methods=["DELETE"]),
        ]
    return routes


async def metrics(request: Request) -> Response:
    """Every figure in Prometheus' text format (the backend's state checked now)."""
    chat = chat_of(request.scope)
    await chat.health()
    return Response(chat.metrics.render(), media_type=CONTENT_TYPE)


def operator(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Check the API key, then run the handler; ApiError and Unavailable become JSON errors."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        chat = chat_of(request.scope)
        if not authorized(request, chat.settings.api_key):
            headers = {"WWW-Authenticate": 'Bearer realm="chat"'}
            return error(401, "unauthorized", "send Authorization: Bearer <api key>", headers)
        try:
            await chat.start()
            return await handler(request, chat)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.detail)
        except Unavailable as exc:
            return error(503, "unavailable", exc.detail)

    return endpoint


def authorized(request: Request, api_key: str) -> bool:
    """Whether the request carries the API key as a bearer token (compared in constant time)."""
    credentials = bearer_credentials(request.headers.get("authorization", ""))
    return credentials is not None and hmac.compare_digest(credentials.encode(), api_key.encode())


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"type": "error", "code": code, "detail": detail}, status_code=status, headers=headers)


@operator
async def list_rooms(request: Request, chat: Chat) -> Response:
    """Every room the backend keeps, with its member count."""
    rooms = await chat.backend.rooms()
    return JSONResponse({"rooms": [{"room": room.room, "members": room.members} for room in rooms]})


@operator
async def show_room(request: Request, chat: Chat) -> Response:
    """A room's members, on every process."""
    room = await known_room(request, chat)
    members = await chat.backend.members(room)
    return JSONResponse({"room": room, "members": [member.as_dict() for member in members]})


@operator
async def room_history(request: Request, chat: Chat) -> Response:
    """Up to ``limit`` (1-100, default 50) messages with seq below ``before`` (default: the latest), oldest first."""
    room = await known_room(request, chat)
    before = int_param(request, "before", 1, None)
    limit = int_param(request, "limit", 1, HISTORY_LIMIT_MAX)
    messages = await chat.backend.history(room, before, HISTORY_LIMIT_DEFAULT if limit is None else limit)
    return Response(encode_messages({"room": room}, messages), media_type="application/json")


@operator
async def post_message(request: Request, chat: Chat) -> Response:
    """Publish as the system sender (``name`` defaults to "system"); members get it like any message."""
    room = await known_room(request, chat)
    body = await json_body(request, chat.settings.max_frame)
    text = body.get("text")
    name = body.get("name", SYSTEM_ID)
    if not isinstance(text, str):
        raise ApiError(422, "bad_request", "the body needs a string 'text'")
    if not isinstance(name, str):
        raise ApiError(422, "bad_request", "'name' must be a string")
    try:
        text = check_text(text, chat.settings.max_text)
        name = parse_name(name)
    except (RequestError, InvalidJoin) as exc:
        raise ApiError(422, "bad_request", exc.detail) from None
    message = await chat.publish(room, Member(SYSTEM_ID, name), text, source="api")
    return JSONResponse({"seq": message.seq})


@operator
async def remove_member(request: Request, chat: Chat) -> Response:
    """Close the member's connections in the room, on whichever process holds them, with 1008 ``removed``."""
    room = await known_room(request, chat)
    member_id = request.path_params["member"]
    if not any(member.id == member_id for member in await chat.backend.members(room)):
        raise ApiError(404, "not_found", f"no member {member_id!r} in room {room!r}")
    await chat.backend.remove(room, member_id)
    return JSONResponse({"removed": member_id, "room": room})


async def known_room(request: Request, chat: Chat) -> str:
    """The path's room, if the backend keeps anything of it; else ApiError 404."""
    room: str = request.path_params["room"]
    if not ROOM_PATTERN.fullmatch(room) or not await chat.backend.exists(room):
        raise ApiError(404, "not_found", f"no room {room!r}")
    return room


def int_param(request: Request, key: str, low: int, high: int | None) -> int | None:
    """An optional integer query parameter within bounds; ApiError 422 otherwise."""
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise ApiError(422, "bad_request", f"{key} must be an integer {bounds}")
    return value


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, read up to ``limit`` bytes; ApiError 413 or 422 otherwise."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"the body must be at most {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(422, "bad_request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(422, "bad_request", "the body must be a JSON object")
    return data
