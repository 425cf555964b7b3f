"""The Origin check against cross-site WebSocket hijacking, sans I/O.

A browser sends ``Origin`` with every WebSocket handshake and attaches the site's cookies whatever
page opened the socket; so by default only pages of the server's own origin (the ``Origin`` host
and port equal the ``Host`` header's) may connect. Others are listed in ``allowed_origins``
(comma-separated, ``*`` for any). Clients that send no Origin are not browsers and are let through:
the check protects browser users, it does not authenticate anyone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, the scheme's default port left out; None if not an origin."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class OriginPolicy:
    """Which browser origins may open a socket: the same origin, plus the listed ones."""

    def __init__(self, allowed: str = "") -> None:
        entries = [entry.strip() for entry in allowed.split(",") if entry.strip()]
        self.any = "*" in entries
        self.allowed = frozenset(filter(None, (normalize(entry) for entry in entries if entry != "*")))
        self.allow_null = "null" in entries

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this ``Origin`` (None: not sent) and ``Host`` header may go on."""
        if origin is None or self.any:
            return True
        if origin.strip() == "null":  # sandboxed frames, file:// pages
            return self.allow_null
        normalized = normalize(origin)
        if normalized is None:
            return False
        return normalized in self.allowed or (host is not None and same_origin(normalized, host))


def same_origin(origin: str, host: str) -> bool:
    """Whether a normalized origin names the host and port of a ``Host`` header."""
    parts = urlsplit(origin)
    try:
        target = urlsplit("//" + host.strip().lower())
        target_port = target.port
    except ValueError:
        return False
    default = DEFAULT_PORTS[parts.scheme]
    return parts.hostname == target.hostname and (parts.port or default) == (target_port or default)
