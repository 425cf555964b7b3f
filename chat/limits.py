"""Pure limit logic: the caller passes the clock, so every rule is testable without waiting."""

from __future__ import annotations


class TokenBucket:
    """Allows ``burst`` events at once and ``rate`` per second on average; a rate of 0 allows everything."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one; say whether the event may go ahead."""
        if self.rate == 0:
            return True
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
