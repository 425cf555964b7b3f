"""``python -m chat.client ws://127.0.0.1:8000 lobby --name ann``: a terminal chat in one room.

Each line read from stdin is sent; the room (messages, joins, leaves, reconnects) is printed. EOF ends it
once every line read was acknowledged, Ctrl-C at once, both with status 0; a refusal or the operator's
removal with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence

from . import Join, Leave, Message, Refused, Rejoined, Removed, Room, RoomEvent, Typing, connect


def describe(event: RoomEvent) -> str | None:
    """The line printed for an event (None: nothing)."""
    if isinstance(event, Message):
        clock = time.strftime("%H:%M", time.localtime(event.ts / 1000))
        return f"[{clock}] {event.sender.name}: {event.text}"
    if isinstance(event, Join):
        return f"* {event.member.name} joined"
    if isinstance(event, Leave):
        return f"* {event.member.name} left"
    if isinstance(event, Rejoined):
        return "* reconnected" if event.recovered else "* reconnected: messages sent meanwhile may be missing"
    if isinstance(event, Removed):
        return f"* you were removed from {event.room}"
    if isinstance(event, Typing):
        return None
    return None


async def show(room: Room) -> None:
    """Print the room until it ends."""
    async for event in room:
        line = describe(event)
        if line is not None:
            print(line, flush=True)


async def stdin_lines() -> asyncio.StreamReader:
    """A reader of stdin that does not block the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def say_lines(room: Room) -> None:
    """Send each line read from stdin, in order, each once acknowledged; returns at EOF."""
    reader = await stdin_lines()
    while line := await reader.readline():
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text.strip():
            await room.send(text)


async def chat(url: str, room_name: str, name: str | None, token: str | None, multiroom: bool | None) -> int:
    async with connect(url, name=name, token=token, multiroom=multiroom) as client:
        room = await client.join(room_name)
        print(f"* joined {room_name} as {room.me.name if room.me else name}", flush=True)
        async with asyncio.TaskGroup() as tasks:
            shown = tasks.create_task(show(room))
            said = tasks.create_task(say_lines(room))
            done, _ = await asyncio.wait([shown, said], return_when=asyncio.FIRST_COMPLETED)
            if said in done:
                shown.cancel()
                return 0
            said.cancel()
            return 1  # removed from the room


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chat.client",
        description="A terminal chat in one room: each line read from stdin is sent, the room is printed.",
    )
    parser.add_argument("url", help="the server's base address, e.g. ws://127.0.0.1:8000")
    parser.add_argument("room", help="the room to join")
    parser.add_argument("--name", help="your display name (the server picks one if not given)")
    parser.add_argument("--token", help="a signed token, when the server's auth is on")
    protocol = parser.add_mutually_exclusive_group()
    protocol.add_argument("--v1", dest="multiroom", action="store_const", const=False, help="use /ws/{room}")
    protocol.add_argument("--v11", dest="multiroom", action="store_const", const=True, help="use /ws")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    try:
        return asyncio.run(chat(args.url, args.room, args.name, args.token, args.multiroom))
    except KeyboardInterrupt:
        return 0
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"cannot connect: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(sys.stdin.fileno(), True)


if __name__ == "__main__":
    sys.exit(main())
