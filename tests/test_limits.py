"""The token bucket, driven by an explicit clock."""

from __future__ import annotations

from chat.limits import TokenBucket


def allowed(bucket: TokenBucket, times: int, now: float) -> int:
    return sum(bucket.allow(now) for _ in range(times))


def test_full_bucket_allows_the_burst_at_once() -> None:
    """A new bucket allows exactly ``burst`` events at the same instant."""
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert allowed(bucket, 25, 0.0) == 20


def test_empty_bucket_refuses() -> None:
    """Once the burst is spent, the next event at the same instant is refused."""
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert allowed(bucket, 3, 0.0) == 3
    assert not bucket.allow(0.0)


def test_tokens_refill_at_rate() -> None:
    """After 1/rate seconds one more event is allowed, and only one."""
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert allowed(bucket, 2, 0.0) == 2
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)


def test_partial_token_is_not_enough() -> None:
    """Half a token does not allow an event; the other half later does."""
    bucket = TokenBucket(rate=10, burst=1, now=0.0)
    assert bucket.allow(0.0)
    assert not bucket.allow(0.05)
    assert bucket.allow(0.1)


def test_refill_is_capped_at_burst() -> None:
    """A long idle period refills at most ``burst`` tokens."""
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert allowed(bucket, 5, 0.0) == 5
    assert allowed(bucket, 10, 1000.0) == 5


def test_sustained_rate_is_respected() -> None:
    """Over ten seconds at 10/s with burst 20, about 20 + 100 events pass."""
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    passed = sum(bucket.allow(step / 100) for step in range(1001))
    assert passed == 120


def test_clock_going_backwards_does_not_add_or_remove_tokens() -> None:
    """A clock that steps back counts as no time passing."""
    bucket = TokenBucket(rate=10, burst=2, now=100.0)
    assert allowed(bucket, 2, 100.0) == 2
    assert not bucket.allow(50.0)
    assert bucket.allow(50.1)


def test_rate_zero_allows_everything() -> None:
    """A rate of 0 turns the limit off, whatever the burst."""
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert allowed(bucket, 1000, 0.0) == 1000


def test_fractional_rate() -> None:
    """A rate below one per second refills one token every 1/rate seconds."""
    bucket = TokenBucket(rate=0.5, burst=1, now=0.0)
    assert bucket.allow(0.0)
    assert not bucket.allow(1.9)
    assert bucket.allow(2.0)


def test_refused_event_does_not_spend_a_token() -> None:
    """Refusals leave the bucket as it was: the refill still arrives on time."""
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.allow(0.0)
    assert allowed(bucket, 10, 0.5) == 0
    assert bucket.allow(1.0)
