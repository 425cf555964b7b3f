"""The Origin check, sans I/O: same origin by default, listed origins, any, and clients without Origin."""

from __future__ import annotations

import pytest

from chat.origins import OriginPolicy, normalize


def test_no_origin_is_allowed() -> None:
    """Clients that send no Origin are not browsers: the check is not for them."""
    assert OriginPolicy().allows(None, "chat.example")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://chat.example", "chat.example"),
        ("https://chat.example", "chat.example:443"),
        ("http://chat.example:8000", "chat.example:8000"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("HTTP://Chat.Example:8000", "chat.example:8000"),
        ("http://[::1]:8000", "[::1]:8000"),
    ],
)
def test_the_same_origin_is_allowed(origin: str, host: str) -> None:
    """A page served by this server (Origin host and port equal Host's) may connect."""
    assert OriginPolicy().allows(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "chat.example"),
        ("http://chat.example:8001", "chat.example:8000"),
        ("https://chat.example.evil.example", "chat.example"),
        ("http://chat.example", "chat.example:8000"),
        ("null", "chat.example"),
        ("not an origin", "chat.example"),
        ("https://chat.example/path", "chat.example"),
        ("https://chat.example", None),
    ],
)
def test_a_foreign_origin_is_refused(origin: str, host: str | None) -> None:
    """Another site's page (another host, another port, no host to compare) may not connect by default."""
    assert not OriginPolicy().allows(origin, host)


def test_listed_origins_are_allowed() -> None:
    """allowed_origins lists other origins, compared after normalizing."""
    policy = OriginPolicy("https://app.example, http://localhost:3000")
    assert policy.allows("https://app.example:443", "chat.example")
    assert policy.allows("http://localhost:3000", "chat.example")
    assert not policy.allows("http://localhost:3001", "chat.example")


def test_a_star_allows_any_origin() -> None:
    """``*`` turns the check off."""
    assert OriginPolicy("*").allows("https://anyone.example", "chat.example")


def test_null_is_allowed_only_when_listed() -> None:
    """The opaque ``null`` origin (sandboxed frames, file://) is refused unless listed."""
    assert OriginPolicy("null").allows("null", "chat.example")


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("https://A.example:443", "https://a.example"),
        ("http://a.example:80/", "http://a.example"),
        ("http://a.example:8080", "http://a.example:8080"),
        ("ftp://a.example", None),
        ("https://a.example:99999", None),
        ("", None),
    ],
)
def test_normalize(origin: str, normalized: str | None) -> None:
    """Lower case, default ports dropped, anything that is not an http(s) or ws(s) origin is None."""
    assert normalize(origin) == normalized
