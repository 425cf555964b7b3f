"""Log lines an operator can grep and parse, and the filter that keeps secrets out of every log line.

``event=connect room=lobby member=3f2a9c01d4e5 name="ann lee" address=203.0.113.5``: one event per
line, ``key=value`` pairs, a value quoted (as JSON) only when it needs to be.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from chat.limits import TokenBucket

_BARE = re.compile(r"[A-Za-z0-9_.:/@\[\]+-]+")
_SECRETS = [
    # ?token=... and &access_token=... in request lines (uvicorn's access and websocket logs print them)
    (re.compile(r"(?i)([?&;](?:access_)?token=)[^&\s\"']*"), r"\1[redacted]"),
    # an Authorization header, should anything print one
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)?\s*)[^\s\"',}]+"), r"\1[redacted]"),
    # anything shaped like a JWT, wherever it appears
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted]"),
]


def fields(**values: object) -> str:
    """``key=value`` pairs in the order given; None values are left out."""
    return " ".join(f"{key}={_value(value)}" for key, value in values.items() if value is not None)


def _value(value: object) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def redact(text: str) -> str:
    """The text with tokens, Authorization values and anything JWT-shaped replaced by ``[redacted]``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """A handler filter that redacts secrets from each record's message and arguments.

    Arguments are redacted one by one (uvicorn's access formatter unpacks them), so every formatter
    keeps working.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(arg) for key, arg in record.args.items()}
        return True


def _redacted(arg: Any) -> Any:
    return redact(arg) if isinstance(arg, str) else arg


class Throttle:
    """At most ``rate`` lines a second (and as many at once), counting the lines it held back."""

    def __init__(self, rate: float) -> None:
        self._bucket = TokenBucket(rate, max(1, int(rate)), 0.0)
        self._held_back = 0

    def allow(self, now: float) -> int | None:
        """None: do not log this one. Otherwise log it, saying how many were held back before it."""
        if not self._bucket.allow(now):
            self._held_back += 1
            return None
        held_back, self._held_back = self._held_back, 0
        return held_back


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
