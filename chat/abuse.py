"""Abuse limits, sans I/O: per-address connection counts and handshake rates, per-connection misconduct.

Every table here is bounded: connection counts hold only addresses with open connections (so never
more addresses than connections), handshake buckets at most ``max_tracked`` addresses, the least
recently seen dropped first (a dropped address starts again with a full burst, which only ever
favours it). An IPv6 address counts as its /64, the block one subscriber usually gets.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict

from chat.limits import TokenBucket

MAX_TRACKED_ADDRESSES = 16384
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
"""An IPv4 address as ``ipaddress`` writes it (no leading zeros)."""
MISCONDUCT_WINDOW = 60.0


def address_key(host: str | None) -> str:
    """The key an address is counted under: the IPv4 address, an IPv6 address's /64, else the host as given."""
    if not host:
        return "unknown"
    if _DOTTED_QUAD.fullmatch(host):  # the usual case, its own key: ipaddress would take ~10 times as long to agree
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AddressLimits:
    """Open connections and handshake rate per client address; a limit of 0 turns that limit off."""

    def __init__(self, max_connections: int, rate: float, burst: int, max_tracked: int = MAX_TRACKED_ADDRESSES) -> None:
        self.max_connections = max_connections
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._open: dict[str, int] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def addresses(self) -> int:
        """Addresses with at least one open connection."""
        return len(self._open)

    @property
    def tracked(self) -> int:
        """Addresses whose handshake rate is remembered."""
        return len(self._buckets)

    def allow_handshake(self, key: str, now: float) -> bool:
        """Take one handshake from the address's bucket; False when it is empty."""
        if self.rate == 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now)

    def acquire(self, key: str) -> bool:
        """Count one more open connection for the address, unless it has ``max_connections`` already."""
        count = self._open.get(key, 0)
        if self.max_connections and count >= self.max_connections:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Count one open connection less for the address."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)


class Misconduct:
    """One connection's record: bad frames in a row, and rate-limited frames in the current minute.

    Made on a connection's first refused frame, so a well-behaved connection never carries one.
    """

    __slots__ = ("bad_in_a_row", "limited", "window_start")

    def __init__(self, now: float) -> None:
        self.bad_in_a_row = 0
        self.limited = 0
        self.window_start = now

    def bad_frame(self, limit: int) -> bool:
        """Count a bad_request, unsupported or too_large answer; True once ``limit`` came in a row."""
        self.bad_in_a_row += 1
        return limit > 0 and self.bad_in_a_row >= limit

    def good_frame(self) -> None:
        """A frame was served: the run of bad ones is broken."""
        self.bad_in_a_row = 0

    def rate_limited(self, now: float, limit: int) -> bool:
        """Count a rate_limited refusal; True once ``limit`` came within one minute."""
        if now - self.window_start >= MISCONDUCT_WINDOW:
            self.window_start = now
            self.limited = 0
        self.limited += 1
        return limit > 0 and self.limited >= limit
