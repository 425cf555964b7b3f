"""Token auth, sans I/O: verify a signed JWT and say who it names and which rooms it opens.

A token carries ``sub`` (the member id), ``exp`` (required: a token without one would never
expire), an optional ``name`` (the display name; ``sub`` when absent) and an optional ``rooms``
claim: room names in which ``*`` stands for any run of characters (``["support-*", "lobby"]``).
HS256 tokens are checked with a shared secret; RS256, ES256 or EdDSA tokens with a public key
(PEM), the algorithm following from the key's type so that a token cannot choose a weaker one.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from chat.exceptions import ConfigError, InvalidJoin
from chat.protocol import MAX_NAME
from chat.settings import Settings

SYSTEM_ID = "system"
"""The member id of messages the operator's API publishes; no token may claim it."""
MAX_SUBJECT = 128
PEM_START = "-----BEGIN"


class InvalidToken(InvalidJoin):
    """The token is missing, malformed, expired, badly signed or names no usable member."""

    reason = "token"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who connects, under which name, where, and until when: what a verified token says, or a host's
    ``authenticate`` hook.

    ``name`` defaults to ``member_id``; ``expires`` (UNIX seconds) closes the connection with 1008 at that
    moment; ``rooms`` are the patterns of the rooms it may join (None: any); ``user`` is the host's own
    object for this user, untouched, for its other hooks.
    """

    member_id: str
    name: str = ""
    expires: float = math.inf
    rooms: tuple[str, ...] | None = None
    user: Any = field(default=None, compare=False)

    def may_join(self, room: str) -> bool:
        """Whether the token's ``rooms`` claim (absent: every room) lets it into ``room``."""
        return self.rooms is None or any(room_matches(pattern, room) for pattern in self.rooms)


def room_matches(pattern: str, room: str) -> bool:
    """``*`` matches any run of characters (none included); everything else matches itself."""
    if "*" not in pattern:
        return pattern == room
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, room) is not None


class Verifier:
    """Checks tokens against one key, for a fixed set of algorithms (never the token's own choice)."""

    def __init__(self, key: Any, algorithms: Sequence[str], audience: str = "", issuer: str = "") -> None:
        self._key = key
        self._algorithms = list(algorithms)
        self._audience = audience or None
        self._issuer = issuer or None

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier | None:
        """The verifier the settings ask for, or None when auth is off; a key that cannot work raises ConfigError."""
        if settings.jwt_secret:
            return cls(settings.jwt_secret, ["HS256"], settings.jwt_audience, settings.jwt_issuer)
        if settings.jwt_public_key:
            key = load_public_key(settings.jwt_public_key)
            return cls(key, algorithms_for(key), settings.jwt_audience, settings.jwt_issuer)
        return None

    def verify(self, token: str | None) -> Identity:
        """The identity a valid, unexpired token names; raises InvalidToken saying what is wrong."""
        if not token:
            raise InvalidToken("a token is required: send Authorization: Bearer <token> or ?token=<token>")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("invalid token: bad signature") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {_describe(exc)}") from None
        return identity_of(claims)


def identity_of(claims: Mapping[str, Any]) -> Identity:
    """The identity in verified claims; raises InvalidToken when ``sub``, ``name`` or ``rooms`` cannot be used."""
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise InvalidToken(f"invalid token: sub must be 1-{MAX_SUBJECT} printable characters")
    name = claims.get("name", subject)
    if not isinstance(name, str):
        raise InvalidToken("invalid token: name must be a string")
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise InvalidToken("invalid token: exp must be a number")
    try:
        return valid_identity(Identity(subject, name, float(expires), _rooms(claims.get("rooms"))))
    except InvalidToken as exc:
        raise InvalidToken(f"invalid token: {exc.detail}") from None


def valid_identity(identity: Identity) -> Identity:
    """The identity with its name trimmed (``member_id`` when empty); raises InvalidToken (the detail says which
    field) when its member id, name or rooms cannot be used."""
    subject, name, rooms = identity.member_id, identity.name, identity.rooms
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT or not _printable(subject):
        raise InvalidToken(f"the member id (sub) must be 1-{MAX_SUBJECT} printable characters")
    if subject == SYSTEM_ID:
        raise InvalidToken(f"the member id (sub) {SYSTEM_ID!r} is reserved")
    if not isinstance(name, str):
        raise InvalidToken("name must be a string")
    name = (name or subject).strip()[:MAX_NAME].strip()
    if not name or not _printable(name):
        raise InvalidToken("name must have printable characters and no control characters")
    if rooms is not None and (not isinstance(rooms, tuple) or not all(isinstance(room, str) for room in rooms)):
        raise InvalidToken("rooms must be a tuple of room names or patterns")
    return identity if name == identity.name else replace(identity, name=name)


def _rooms(claim: object) -> tuple[str, ...] | None:
    if claim is None:
        return None
    if not isinstance(claim, list) or not all(isinstance(pattern, str) for pattern in claim):
        raise InvalidToken("invalid token: rooms must be a list of room names or patterns")
    return tuple(claim)


def _printable(text: str) -> bool:
    return not any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in text)


def _describe(exc: jwt.InvalidTokenError) -> str:
    """A short reason that never echoes the token."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim!r}"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not valid yet"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, jwt.DecodeError):
        return "malformed"
    return "rejected"


def load_public_key(value: str) -> Any:
    """A public key from PEM text, or from the PEM file that ``value`` names."""
    pem = value if value.lstrip().startswith(PEM_START) else _read_key_file(value)
    try:
        return load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"jwt_public_key is not a PEM public key: {exc}") from None


def _read_key_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"jwt_public_key: neither PEM text nor a readable file ({exc.strerror})") from None


_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}


def algorithms_for(key: Any) -> list[str]:
    """The algorithms a public key of this type verifies."""
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is not None:
            return [algorithm]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ConfigError(f"jwt_public_key: unsupported key type {type(key).__name__}")


def bearer_token(headers: Iterable[tuple[bytes, bytes]], query: Mapping[str, str]) -> str | None:
    """The token from ``Authorization: Bearer`` (non-browser clients) or else ``?token=`` (browsers)."""
    for name, value in headers:
        if name == b"authorization":
            credentials = bearer_credentials(value.decode("latin-1"))
            if credentials:
                return credentials
    return query.get("token") or None


def bearer_credentials(authorization: str) -> str | None:
    """The credentials of an ``Authorization`` value in the Bearer scheme (any case), stripped and maybe empty.

    None when the value is in another scheme (or none).
    """
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None
