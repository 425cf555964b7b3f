"""A multi-room WebSocket chat server on Starlette: run it, embed it, scale it."""

from __future__ import annotations

from chat.app import create_app
from chat.auth import Identity
from chat.chat import Chat
from chat.endpoint import ChatEndpoint
from chat.exceptions import ChatError, Refuse
from chat.hooks import Hooks
from chat.multiroom import MultiRoomEndpoint
from chat.settings import Settings

__all__ = [
    "Chat",
    "ChatEndpoint",
    "ChatError",
    "Hooks",
    "Identity",
    "MultiRoomEndpoint",
    "Refuse",
    "Settings",
    "create_app",
]
__version__ = "0.1.0"
