"""The client's reconnect waits: the web client's backoff with jitter, after 1012 and 1013 too."""

from __future__ import annotations

import pytest

from chat.client.backoff import backoff, retry_delay


def fixed(value: float) -> float:
    return value


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(0, 0.25, 0.5), (1, 0.5, 1.0), (2, 1.0, 2.0), (4, 4.0, 8.0), (5, 7.5, 15.0), (50, 7.5, 15.0)],
)
def test_backoff_is_half_fixed_half_random_doubling_to_a_cap(attempt: int, low: float, high: float) -> None:
    """0.25-0.5 s first, doubling up to 7.5-15 s: the low end with random() = 0, the high end with 1."""
    assert backoff(attempt, lambda: 0.0) == pytest.approx(low)
    assert backoff(attempt, lambda: 1.0) == pytest.approx(high)


@pytest.mark.parametrize(
    ("attempt", "code", "low", "high"),
    [
        (0, 1006, 0.25, 0.5),  # dropped
        (0, 1012, 0.15, 0.75),  # restarting: come back soon, spread out
        (1, 1012, 0.5, 1.0),  # then the usual backoff
        (0, 1013, 2.0, 4.0),  # busy: at least 2-4 s
        (3, 1013, 2.0, 4.0),
        (5, 1013, 7.5, 15.0),  # past 2-4 s, the backoff itself
        (0, 1001, 0.25, 0.5),
    ],
)
def test_retry_delay_by_close_code(attempt: int, code: int, low: float, high: float) -> None:
    """The wait before the next attempt after a close with ``code``."""
    assert retry_delay(attempt, code, lambda: 0.0) == pytest.approx(low)
    assert retry_delay(attempt, code, lambda: 1.0) == pytest.approx(high)
    assert low <= retry_delay(attempt, code) <= high
