"""The one typed settings object, built from arguments or ``CHAT_*`` environment variables.

Nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import field as _field
from typing import Any

from chat.exceptions import ConfigError

ENV_PREFIX = "CHAT_"
MAX_WRITE_DELAY = 1.0
"""Seconds every frame may be held back to share a write with later ones (``write_delay``), at most."""
MAX_PRESENCE_WINDOW = 10.0
"""Seconds a room's joins and leaves may wait to be announced together (``presence_window``, ``presence_window_max``),
at most."""

SQLITE_SYNCHRONOUS = ("off", "normal", "full", "extra")
"""SQLite's ``synchronous`` levels (the README says what each survives); ``normal`` is the default."""
SQLITE_WRITERS = ("thread", "loop")
"""Where SQLite commits: a writer thread of its own (the default), or the event loop's thread."""
COMMAND_LINE_STORE = "sqlite:///chat.db"
"""Where the command-line server records messages when neither the store nor a shared backend is named."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the server; defaults suit a single process serving a few thousand members."""

    backend: str = "memory://"
    # Where messages are recorded: "" follows the backend (memory:// or redis://, bounded history);
    # sqlite:///PATH or postgresql://... keep every message (the command-line server: sqlite:///chat.db).
    store: str = ""
    retention_seconds: float = 0.0
    retention_messages: int = 0
    sqlite_synchronous: str = "normal"
    sqlite_writer: str = "thread"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    history_size: int = 1000
    history_on_join: int = 50
    history_ttl: float = 86400.0
    max_rooms: int = 10000
    max_text: int = 4000
    max_frame: int = 65536
    rate_burst: int = 20
    rate_per_second: float = 10.0
    queue_bytes: int = 1048576
    max_connections: int = 10000
    max_rooms_per_connection: int = 100
    send_timeout: float = 30.0
    write_delay: float = 0.0
    presence_ttl: float = 30.0
    presence_window: float = 0.1
    presence_window_max: float = 2.0
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_per_message_deflate: bool = False
    log_level: str = "info"
    # Who may connect (off by default: anyone may, under any name).
    jwt_secret: str = _field(default="", repr=False)
    jwt_public_key: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    allowed_origins: str = ""
    # Abuse limits (0 turns each off).
    max_connections_per_ip: int = 100
    handshake_rate_per_ip: float = 50.0
    handshake_burst_per_ip: int = 200
    max_bad_frames: int = 50
    max_rate_limited_per_minute: int = 200
    handshake_timeout: float = 10.0
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # The operator's view.
    api_key: str = _field(default="", repr=False)
    metrics: bool = True
    metrics_dir: str = ""
    # The command-line server: seconds between handing the C allocator's free memory back to the system (0: never).
    trim_interval: float = 60.0
    # A host app's hooks (``create_app(hooks=...)``, or ``module:attribute`` here): how long one may take.
    hooks: str = ""
    hook_timeout: float = 5.0

    @property
    def auth(self) -> bool:
        """Whether connections need a signed token."""
        return bool(self.jwt_secret or self.jwt_public_key)

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the setting."""
        positive = (
            "history_size",
            "history_on_join",
            "max_rooms",
            "max_text",
            "max_frame",
            "rate_burst",
            "queue_bytes",
            "max_connections",
            "max_rooms_per_connection",
            "workers",
            "send_timeout",
            "presence_ttl",
            "handshake_burst_per_ip",
            "handshake_timeout",
            "hook_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:  # "not >" also refuses NaN
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        non_negative = (
            "history_ttl",
            "retention_seconds",
            "retention_messages",
            "rate_per_second",
            "write_delay",
            "presence_window",
            "presence_window_max",
            "trim_interval",
            "ws_ping_interval",
            "ws_ping_timeout",
            "max_connections_per_ip",
            "handshake_rate_per_ip",
            "max_bad_frames",
            "max_rate_limited_per_minute",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if self.write_delay > MAX_WRITE_DELAY:
            raise ConfigError(f"write_delay is seconds, at most {MAX_WRITE_DELAY}, got {self.write_delay!r}")
        for name in ("presence_window", "presence_window_max"):
            if getattr(self, name) > MAX_PRESENCE_WINDOW:
                raise ConfigError(f"{name} is seconds, at most {MAX_PRESENCE_WINDOW}, got {getattr(self, name)!r}")
        if self.history_on_join > self.history_size:
            raise ConfigError("history_on_join must not exceed history_size")
        if "://" not in self.backend:
            raise ConfigError(f"backend must be a URL such as memory:// or redis://host:6379/0, got {self.backend!r}")
        if self.store and "://" not in self.store:
            raise ConfigError(f"store must be a URL such as sqlite:///chat.db or postgresql://..., got {self.store!r}")
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ConfigError(
                f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}, got {self.sqlite_synchronous!r}"
            )
        if self.sqlite_writer not in SQLITE_WRITERS:
            raise ConfigError(f"sqlite_writer must be one of {', '.join(SQLITE_WRITERS)}, got {self.sqlite_writer!r}")
        if self.sqlite_writer == "loop" and self.sqlite_synchronous in ("full", "extra"):
            raise ConfigError(
                "sqlite_writer=loop needs sqlite_synchronous off or normal: "
                "a commit that waits for the disk would stall every connection"
            )
        if self.jwt_secret and self.jwt_public_key:
            raise ConfigError("set jwt_secret (HS256) or jwt_public_key (RS256/ES256), not both")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CHAT_*`` variables, then apply explicit overrides (None means unset)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw.strip() != "":
                values[field.name] = _parse(field.name, field.type, raw.strip())
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``CHAT_*`` variables that rebuild these settings in another process (uvicorn workers)."""
        return {ENV_PREFIX + name.upper(): _format(value) for name, value in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _parse(name: str, kind: object, raw: str) -> Any:
    """Turn one environment string into the field's type, or raise ConfigError naming the variable."""
    variable = ENV_PREFIX + name.upper()
    try:
        if kind == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be {kind}, got {raw!r}") from None
    return raw


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
