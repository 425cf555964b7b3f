"""How long to wait before connecting again: the web client's rules (``chat/static/protocol.js``), pure."""

from __future__ import annotations

import random as _random
from collections.abc import Callable

BASE = 0.5
"""Seconds: the first step; each wait is half its step fixed and half random."""
CAP = 15.0
"""Seconds: the largest step (so the longest wait is 7.5-15 s)."""

RESTARTING = 1012
BUSY = 1013
ABNORMAL = 1006
"""The code of a connection that went without a close frame, or never opened."""


def backoff(attempt: int, random: Callable[[], float] = _random.random) -> float:
    """Exponential backoff with jitter: 0.25-0.5 s for attempt 0, doubling up to 7.5-15 s."""
    step: float = min(CAP, BASE * 2.0 ** min(attempt, 16))
    return step / 2 + random() * (step / 2)


def retry_delay(attempt: int, code: int, random: Callable[[], float] = _random.random) -> float:
    """Seconds to wait before attempt ``attempt`` + 1 after a close with ``code``.

    A restarting server (1012) is tried again soon, spread over 0.15-0.75 s so that its members do not all come
    back at once; a busy one (1013: full, or we read too slowly) gets at least 2-4 s.
    """
    delay = backoff(attempt, random)
    if code == RESTARTING and attempt == 0:
        delay = 0.15 + random() * 0.6
    if code == BUSY:
        delay = max(delay, 2.0 + random() * 2.0)
    return delay
