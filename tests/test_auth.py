"""Token auth, sans I/O: signatures, expiry, claims, algorithms, room patterns and where tokens come from."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from chat.auth import Identity, InvalidToken, Verifier, algorithms_for, bearer_token, load_public_key, room_matches
from chat.exceptions import ConfigError
from chat.settings import Settings
from tests.tokens import SECRET, ec_keys, rsa_keys, token


def hs256(**settings: str) -> Verifier:
    verifier = Verifier.from_settings(Settings(jwt_secret=SECRET, **settings))  # type: ignore[arg-type]
    assert verifier is not None
    return verifier


def test_auth_is_off_without_a_secret_or_key() -> None:
    """No jwt_secret and no jwt_public_key: no verifier, anyone may connect."""
    assert Verifier.from_settings(Settings()) is None
    assert not Settings().auth


def test_a_valid_token_names_the_member() -> None:
    """sub becomes the member id, name the display name, exp the expiry."""
    identity = hs256().verify(token(sub="u-1", name="Ann Lee"))
    assert (identity.member_id, identity.name, identity.rooms) == ("u-1", "Ann Lee", None)
    assert identity.expires > time.time()


def test_without_a_name_claim_the_sub_is_the_name() -> None:
    """A token without ``name`` shows its ``sub``."""
    assert hs256().verify(token(sub="u-2", name=None)).name == "u-2"


def test_a_long_name_is_trimmed_and_cut_to_32_characters() -> None:
    """Identity providers' long display names are shortened, not refused."""
    assert hs256().verify(token(name="  " + "n" * 40)).name == "n" * 32


def test_a_name_with_control_characters_is_refused() -> None:
    """A name with a newline could forge log lines and frames: refused."""
    with pytest.raises(InvalidToken, match="name"):
        hs256().verify(token(name="a\nb"))


def test_an_expired_token_is_refused() -> None:
    """A token whose exp has passed is refused as expired."""
    with pytest.raises(InvalidToken, match="token expired"):
        hs256().verify(token(ttl=-10))


def test_a_wrong_signature_is_refused() -> None:
    """A token signed with another secret is refused."""
    with pytest.raises(InvalidToken, match="bad signature"):
        hs256().verify(token(secret="another-secret-that-is-long-enough-too"))


@pytest.mark.parametrize("missing", [None, ""])
def test_a_missing_token_is_refused(missing: str | None) -> None:
    """No token at all is refused, saying how to send one."""
    with pytest.raises(InvalidToken, match="token is required"):
        hs256().verify(missing)


@pytest.mark.parametrize("garbage", ["not-a-token", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "x" * 5000])
def test_a_malformed_token_is_refused(garbage: str) -> None:
    """Anything that is not a JWT is refused cleanly."""
    with pytest.raises(InvalidToken, match="invalid token"):
        hs256().verify(garbage)


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_exp_and_sub_are_required(claim: str) -> None:
    """A token without exp would never expire; one without sub names nobody: both refused."""
    claims: dict[str, Any] = {claim: None}
    with pytest.raises(InvalidToken, match=claim):
        hs256().verify(token(**claims))


def test_the_system_sub_is_reserved() -> None:
    """No token may speak as the operator's system sender."""
    with pytest.raises(InvalidToken, match="reserved"):
        hs256().verify(token(sub="system"))


def test_an_unsigned_token_is_refused() -> None:
    """alg=none is never accepted."""
    unsigned = token(secret="", algorithm="none")
    with pytest.raises(InvalidToken):
        hs256().verify(unsigned)


def test_audience_and_issuer_are_checked_when_set() -> None:
    """With jwt_audience and jwt_issuer set, tokens for another audience or from another issuer are refused."""
    verifier = hs256(jwt_audience="chat", jwt_issuer="https://id.example")
    assert verifier.verify(token(aud="chat", iss="https://id.example")).member_id == "u-ann"
    with pytest.raises(InvalidToken, match="audience"):
        verifier.verify(token(aud="billing", iss="https://id.example"))
    with pytest.raises(InvalidToken, match="issuer"):
        verifier.verify(token(aud="chat", iss="https://evil.example"))


def test_rs256_tokens_verify_with_the_public_key() -> None:
    """An RSA public key in jwt_public_key verifies RS256 tokens."""
    private, pem = rsa_keys()
    verifier = Verifier.from_settings(Settings(jwt_public_key=pem))
    assert verifier is not None
    assert verifier.verify(token(secret=private, algorithm="RS256")).member_id == "u-ann"


def test_es256_tokens_verify_with_the_public_key() -> None:
    """A P-256 public key verifies ES256 tokens."""
    private, pem = ec_keys()
    verifier = Verifier.from_settings(Settings(jwt_public_key=pem))
    assert verifier is not None
    assert verifier.verify(token(secret=private, algorithm="ES256")).name == "ann"


def test_a_token_signed_with_another_private_key_is_refused() -> None:
    """The signature must come from the configured key's private half."""
    _, pem = rsa_keys()
    other, _ = rsa_keys()
    verifier = Verifier.from_settings(Settings(jwt_public_key=pem))
    assert verifier is not None
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify(token(secret=other, algorithm="RS256"))


def test_an_hs256_token_cannot_use_the_public_key_as_its_secret() -> None:
    """Algorithm confusion: with a public key configured, HS256 tokens are refused whatever they are signed with."""
    _, pem = rsa_keys()
    verifier = Verifier.from_settings(Settings(jwt_public_key=pem))
    assert verifier is not None
    with pytest.raises(InvalidToken, match="algorithm not allowed"):
        verifier.verify(token(secret=SECRET, algorithm="HS256"))


def test_the_public_key_may_be_a_file(tmp_path: Path) -> None:
    """jwt_public_key may name a PEM file instead of holding the PEM."""
    _, pem = ec_keys()
    path = tmp_path / "key.pem"
    path.write_text(pem)
    assert algorithms_for(load_public_key(str(path))) == ["ES256"]


@pytest.mark.parametrize("value", ["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "/no/such/key.pem"])
def test_an_unusable_public_key_is_a_config_error(value: str) -> None:
    """A key that is neither PEM nor a readable PEM file stops the app at startup."""
    with pytest.raises(ConfigError, match="jwt_public_key"):
        Verifier.from_settings(Settings(jwt_public_key=value))


def test_secret_and_public_key_together_are_refused() -> None:
    """One way to verify at a time."""
    _, pem = ec_keys()
    with pytest.raises(ConfigError, match="not both"):
        Settings(jwt_secret=SECRET, jwt_public_key=pem)


def test_the_secret_never_shows_in_the_settings_repr() -> None:
    """Settings printed in a log or a traceback do not show the JWT secret or the API key."""
    text = repr(Settings(jwt_secret="s3cr3t-value", api_key="k3y-value"))
    assert "s3cr3t-value" not in text
    assert "k3y-value" not in text


# --- the rooms claim ------------------------------------------------------------------------------


def test_a_rooms_claim_limits_the_rooms() -> None:
    """Names and patterns in ``rooms`` let the token in; other rooms are not allowed."""
    identity = hs256().verify(token(rooms=["lobby", "support-*"]))
    assert identity.may_join("lobby")
    assert identity.may_join("support-42")
    assert not identity.may_join("admin")
    assert not identity.may_join("lobby2")


def test_without_a_rooms_claim_every_room_is_allowed() -> None:
    """No ``rooms`` claim: any room."""
    assert Identity("u", "u", 0.0).may_join("anything")


def test_an_empty_rooms_claim_allows_no_room() -> None:
    """``rooms: []`` opens nothing."""
    assert not hs256().verify(token(rooms=[])).may_join("lobby")


@pytest.mark.parametrize("claim", ["lobby", [1, 2], {"lobby": True}])
def test_a_rooms_claim_that_is_not_a_list_of_strings_is_refused(claim: object) -> None:
    """A malformed rooms claim refuses the token rather than guessing."""
    with pytest.raises(InvalidToken, match="rooms"):
        hs256().verify(token(rooms=claim))


@pytest.mark.parametrize(
    ("pattern", "room", "matches"),
    [
        ("lobby", "lobby", True),
        ("lobby", "Lobby", False),
        ("*", "anything", True),
        ("team-*", "team-", True),
        ("team-*", "team-a.b", True),
        ("team-*", "teams", False),
        ("*-ops", "db-ops", True),
        ("a*b*c", "a-x-b-y-c", True),
        ("a*b*c", "a-x-c", False),
        ("room.1", "roomx1", False),
        ("[ab]", "a", False),
    ],
)
def test_room_patterns(pattern: str, room: str, matches: bool) -> None:
    """``*`` matches any run of characters; every other character (``.``, ``[``) only itself."""
    assert room_matches(pattern, room) is matches


# --- where the token comes from ---------------------------------------------------------------------


def test_the_bearer_header_is_read() -> None:
    """``Authorization: Bearer T`` gives T."""
    assert bearer_token([(b"authorization", b"Bearer abc.def.ghi")], {}) == "abc.def.ghi"


def test_the_header_wins_over_the_query() -> None:
    """A non-browser client's header is preferred to a query parameter."""
    assert bearer_token([(b"authorization", b"bearer from-header")], {"token": "from-query"}) == "from-header"


def test_the_query_parameter_is_read() -> None:
    """Browsers cannot set headers on a WebSocket: ``?token=T`` gives T."""
    assert bearer_token([], {"token": "from-query"}) == "from-query"


def test_other_authorization_schemes_are_ignored() -> None:
    """Basic credentials are not a token."""
    assert bearer_token([(b"authorization", b"Basic dXNlcjpwYXNz")], {}) is None
