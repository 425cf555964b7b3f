"""A multi-room WebSocket chat server on Starlette: run it, embed it, scale it."""

from __future__ import annotations

from chat.app import create_app
from chat.chat import Chat
from chat.endpoint import ChatEndpoint
from chat.exceptions import ChatError
from chat.multiroom import MultiRoomEndpoint
from chat.settings import Settings

__all__ = ["Chat", "ChatEndpoint", "ChatError", "MultiRoomEndpoint", "Settings", "create_app"]
__version__ = "0.1.0"
