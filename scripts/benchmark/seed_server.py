"""Reference server ``seed``: the classic Starlette chat example, as the project started.

A dict of room -> list of websockets; accept, loop on ``receive_text``, and for every message
``await ws.send_text`` to each member in turn; cleanup on ``WebSocketDisconnect``. Served by uvicorn
with its default websocket implementation and settings. It speaks just enough of the chat protocol
for the benchmark's clients: a ``welcome`` frame on connect, and each incoming text wrapped into a
``message`` frame with a per-room seq. It has no acks. The serial send is the point: one member that
stops reading stalls the whole room.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmark.reference import message, new_member, welcome

rooms: dict[str, list[WebSocket]] = {}


async def chat(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    me = new_member(websocket.query_params.get("name", "guest"))
    await websocket.accept()
    await websocket.send_text(welcome(room, me))
    members = rooms.setdefault(room, [])
    members.append(websocket)
    try:
        while True:
            encoded = message(room, me, await websocket.receive_text())
            for member in members:
                await member.send_text(encoded)
    except WebSocketDisconnect:
        members.remove(websocket)


app = Starlette(routes=[WebSocketRoute("/ws/{room}", chat)])


def main() -> None:
    parser = argparse.ArgumentParser(description="The seed chat server (benchmark reference).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    arguments = parser.parse_args()
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level=arguments.log_level)


if __name__ == "__main__":
    main()
