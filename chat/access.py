"""Who may open a socket, sans I/O: handshake rate and open connections per address, Origin, token, rooms.

The checks run cheapest first, so a flood of handshakes is turned away before any signature is
checked. Each refusal is a ``ConnectionRefused`` that the endpoint answers before accepting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chat.abuse import AddressLimits
from chat.auth import Identity, Verifier, bearer_token
from chat.exceptions import InvalidJoin, TooManyConnections
from chat.origins import OriginPolicy
from chat.settings import Settings

Headers = Sequence[tuple[bytes, bytes]]


class Access:
    """One per app: the address limits, the Origin policy and the token verifier (None: auth off)."""

    def __init__(self, settings: Settings) -> None:
        self.limits = AddressLimits(
            settings.max_connections_per_ip, settings.handshake_rate_per_ip, settings.handshake_burst_per_ip
        )
        self.origins = OriginPolicy(settings.allowed_origins)
        self.verifier = Verifier.from_settings(settings)

    def screen(self, address: str, headers: Headers, now: float) -> None:
        """The checks before anyone's identity: the address's handshake rate, the Origin; raises ConnectionRefused."""
        if not self.limits.allow_handshake(address, now):
            raise TooManyConnections("too many handshakes from your address: slow down", "handshake_rate")
        origin = host = None
        for name, value in headers:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        if not self.origins.allows(origin, host):
            raise InvalidJoin("origin not allowed", "origin")

    def verify(self, headers: Headers, query: Mapping[str, str]) -> Identity | None:
        """The identity the handshake's token proves (None when token auth is off); raises InvalidToken."""
        if self.verifier is None:
            return None
        return self.verifier.verify(bearer_token(headers, query))

    def authorize(self, identity: Identity | None, room: str) -> None:
        """Raise InvalidJoin when the token's ``rooms`` claim does not open ``room``."""
        if identity is not None and not identity.may_join(room):
            raise InvalidJoin(f"your token does not allow room {room!r}", "room_not_allowed")

    def acquire(self, address: str) -> None:
        """Count an open connection for the address; raise TooManyConnections at its limit."""
        if not self.limits.acquire(address):
            raise TooManyConnections("too many connections from your address")

    def release(self, address: str) -> None:
        self.limits.release(address)
