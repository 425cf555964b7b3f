"""Abuse limits, sans I/O: address keys, per-address connections and handshake buckets, misconduct counters."""

from __future__ import annotations

import ipaddress

import pytest

from chat.abuse import MISCONDUCT_WINDOW, AddressLimits, Misconduct, address_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("testclient", "testclient"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_address_key(host: str | None, key: str) -> None:
    """IPv4 as is, IPv6 by its /64 (one subscriber), mapped IPv4 as IPv4, anything else as given."""
    assert address_key(host) == key


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.9",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.4 ",
        "\u0661.2.3.4",
    ],
)
def test_an_ipv4_address_is_keyed_as_ipaddress_writes_it(host: str) -> None:
    """A dotted quad is its own key exactly when ``ipaddress`` writes it that way; anything else is keyed as given."""
    try:
        written = str(ipaddress.IPv4Address(host))
    except ValueError:
        written = host
    assert address_key(host) == written


def test_connections_per_address_are_capped() -> None:
    """An address gets max_connections connections, then is refused until one is released."""
    limits = AddressLimits(2, 0, 1)
    assert limits.acquire("a")
    assert limits.acquire("a")
    assert not limits.acquire("a")
    assert limits.acquire("b")
    limits.release("a")
    assert limits.acquire("a")


def test_a_zero_connection_limit_is_off() -> None:
    """max_connections 0 never refuses."""
    limits = AddressLimits(0, 0, 1)
    assert all(limits.acquire("a") for _ in range(1000))


def test_released_addresses_are_forgotten() -> None:
    """The table holds only addresses with open connections."""
    limits = AddressLimits(5, 0, 1)
    limits.acquire("a")
    limits.acquire("b")
    limits.release("a")
    limits.release("b")
    assert limits.addresses == 0


def test_handshakes_are_limited_per_address() -> None:
    """A burst of handshakes, then the rate; another address has its own bucket."""
    limits = AddressLimits(0, 1.0, 3)
    assert [limits.allow_handshake("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limits.allow_handshake("b", 0.0)
    assert limits.allow_handshake("a", 1.0)
    assert not limits.allow_handshake("a", 1.0)


def test_a_zero_handshake_rate_is_off() -> None:
    """Rate 0 allows every handshake and remembers nothing."""
    limits = AddressLimits(0, 0, 1)
    assert all(limits.allow_handshake("a", 0.0) for _ in range(1000))
    assert limits.tracked == 0


def test_handshake_buckets_are_bounded() -> None:
    """However many addresses come, at most max_tracked buckets are kept; the least recently seen goes first."""
    limits = AddressLimits(0, 1.0, 1, max_tracked=3)
    for address in ("a", "b", "c"):
        assert limits.allow_handshake(address, 0.0)
    assert not limits.allow_handshake("a", 0.0)  # "a" is now the most recently seen
    assert limits.allow_handshake("d", 0.0)  # one address too many: "b", the least recently seen, goes
    assert not limits.allow_handshake("a", 0.0)  # "a" was kept: its bucket is still empty
    assert limits.allow_handshake("b", 0.0)  # "b" was dropped: it starts again with a full bucket
    for index in range(1000):
        limits.allow_handshake(f"x{index}", 0.0)
    assert limits.tracked == 3


def test_an_evicted_address_starts_with_a_full_bucket() -> None:
    """Forgetting an address only ever favours it (it is never refused for someone else's handshakes)."""
    limits = AddressLimits(0, 1.0, 1, max_tracked=1)
    assert limits.allow_handshake("a", 0.0)
    assert limits.allow_handshake("b", 0.0)
    assert limits.allow_handshake("a", 0.0)


def test_bad_frames_in_a_row_reach_the_limit() -> None:
    """The limit-th bad frame in a row says close."""
    record = Misconduct(0.0)
    assert [record.bad_frame(3) for _ in range(3)] == [False, False, True]


def test_a_good_frame_breaks_the_run() -> None:
    """Bad frames separated by good ones never add up."""
    record = Misconduct(0.0)
    for _ in range(10):
        assert not record.bad_frame(3)
        assert not record.bad_frame(3)
        record.good_frame()


def test_a_zero_bad_frame_limit_is_off() -> None:
    """Limit 0 never says close."""
    record = Misconduct(0.0)
    assert not any(record.bad_frame(0) for _ in range(1000))


def test_rate_limited_frames_within_a_minute_reach_the_limit() -> None:
    """The limit-th rate_limited refusal within one minute says close."""
    record = Misconduct(0.0)
    assert [record.rate_limited(float(second), 3) for second in range(3)] == [False, False, True]


def test_rate_limited_frames_in_different_minutes_do_not_add_up() -> None:
    """The count starts again after a minute."""
    record = Misconduct(0.0)
    assert not record.rate_limited(0.0, 2)
    assert not record.rate_limited(MISCONDUCT_WINDOW + 1, 2)
    assert record.rate_limited(MISCONDUCT_WINDOW + 2, 2)
