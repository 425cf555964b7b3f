"""Reference server ``raw``: the ``websockets`` library alone, fanning out with ``websockets.broadcast()``.

The practical limit for a Python server: ``broadcast`` encodes each frame once and writes it to
every member's transport synchronously, with no per-member buffer and no backpressure. Same minimal
protocol as ``seed``: a ``welcome`` on connect, each incoming text wrapped into a ``message`` frame
with a per-room seq, no acks. Runs on uvloop. A member gone without a close frame (a reset) is
taken out quietly, as a server in production would (the library logs a traceback for each one
otherwise: seconds of a server's time when thousands of members drop at once, in ``storm``).
"""

from __future__ import annotations

import argparse
import logging
from urllib.parse import parse_qs, unquote, urlsplit

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from benchmark.reference import message, new_member, welcome

rooms: dict[str, dict[ServerConnection, None]] = {}
"""Room -> members in join order (a dict, so that every run sends in the same order, as seed's list does)."""


def parse_path(path: str) -> tuple[str, str]:
    """``/ws/{room}?name=N`` -> (room, name)."""
    parts = urlsplit(path)
    room = unquote(parts.path.rsplit("/", 1)[-1])
    name = parse_qs(parts.query).get("name", ["guest"])[0]
    return room, name


async def chat(websocket: ServerConnection) -> None:
    room, name = parse_path(websocket.request.path if websocket.request else "/ws/lobby")
    me = new_member(name)
    await websocket.send(welcome(room, me))
    members = rooms.setdefault(room, {})
    members[websocket] = None
    try:
        async for data in websocket:
            broadcast(members, message(room, me, data if isinstance(data, str) else data.decode()))
    except ConnectionClosed:
        pass  # gone without a close frame (a reset): the library would log a traceback for each one
    finally:
        members.pop(websocket, None)


async def serve_forever(host: str, port: int) -> None:
    async with serve(chat, host, port, max_size=65536) as server:
        print(f"raw server listening on {host}:{port}", flush=True)
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="The raw websockets chat server (benchmark reference).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    arguments = parser.parse_args()
    logging.basicConfig(level=arguments.log_level.upper())
    uvloop.run(serve_forever(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
