"""Property-based tests: whatever a client sends, the pure core answers with a value or a clean error, never a crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.auth import Identity, InvalidToken, Verifier, bearer_token
from chat.exceptions import InvalidJoin, RequestError
from chat.logs import fields, redact
from chat.origins import OriginPolicy
from chat.protocol import (
    ROOM_PATTERN,
    ClientRequest,
    HistoryQuery,
    Join,
    JoinRequest,
    Leave,
    Ping,
    RoomRequest,
    SendText,
    Typing,
    decode,
    decode_multi,
    encode_request_error,
    parse_join,
)
from chat.settings import Settings
from tests.tokens import SECRET

MAX_TEXT = 4000
FUZZ = settings(max_examples=200, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "typing", "history", "ping", "nope"]) | json_values,
        "text": st.text(max_size=60) | json_values,
        "ref": st.integers() | st.text(max_size=70) | json_values,
        "before": st.integers() | json_values,
        "limit": st.integers(min_value=-5, max_value=120) | json_values,
    },
)


multi_frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["join", "leave", "message", "typing", "history", "ping", "nope"]) | json_values,
        "room": st.sampled_from(["lobby", "r-1", "-bad", "", "\ud800", "x" * 200]) | st.text(max_size=70) | json_values,
        "text": st.text(max_size=60) | json_values,
        "ref": st.integers() | st.text(max_size=70) | json_values,
        "since": st.integers() | json_values,
        "epoch": st.text(max_size=70) | json_values,
        "before": st.integers() | json_values,
        "limit": st.integers(min_value=-5, max_value=120) | json_values,
    },
)


def outcome(
    data: str | bytes, decoder: Callable[[str | bytes, int], RoomRequest] = decode
) -> RoomRequest | RequestError:
    """What a decoder (v1's by default) makes of a frame: a request or the RequestError that answers it
    (anything else fails)."""
    try:
        return decoder(data, MAX_TEXT)
    except RequestError as exc:
        return exc


@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_a_request_or_a_clean_error(data: str) -> None:
    """Any text frame decodes to a request or raises a RequestError with a code and a detail."""
    result = outcome(data)
    if isinstance(result, RequestError):
        assert result.code in ("bad_request", "too_large")
        assert result.detail
    else:
        assert isinstance(result, SendText | Typing | HistoryQuery | Ping)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_unsupported(data: bytes) -> None:
    """Every binary frame is answered with unsupported."""
    result = outcome(data)
    assert isinstance(result, RequestError)
    assert result.code == "unsupported"


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decoded_as_text_are_a_request_or_a_clean_error(data: bytes) -> None:
    """Bytes that made it into a text frame (surrogate escapes included) never crash the decoder."""
    assert isinstance(outcome(data.decode("utf-8", "surrogateescape")), ClientRequest | RequestError)


@FUZZ
@given(frame_objects)
def test_any_json_object_is_a_request_or_a_clean_error(obj: dict[str, Any]) -> None:
    """JSON objects with any mix of known fields and odd values: a valid request or a clean error."""
    result = outcome(json.dumps(obj))
    if isinstance(result, SendText):
        assert result.text.strip()
        assert len(result.text) <= MAX_TEXT
    elif isinstance(result, HistoryQuery):
        assert 1 <= result.limit <= 100
        assert result.before is None or result.before >= 1
    else:
        assert isinstance(result, Typing | Ping | RequestError)


@FUZZ
@given(json_values)
def test_any_json_value_is_a_request_or_a_clean_error(value: Any) -> None:
    """Any JSON document (arrays, numbers, nesting) is handled."""
    assert isinstance(outcome(json.dumps(value)), ClientRequest | RequestError)


@FUZZ
@given(st.text(max_size=80), st.dictionaries(st.sampled_from(["name", "since", "epoch", "batch", "token"]), st.text()))
def test_any_join_is_valid_or_refused(room: str, query: dict[str, str]) -> None:
    """Any room and query parameters give a join request or an InvalidJoin."""
    try:
        request: JoinRequest | InvalidJoin = parse_join(room, query)
    except InvalidJoin as exc:
        request = exc
    assert isinstance(request, JoinRequest) or request.detail


@FUZZ
@given(st.text(max_size=100) | st.none(), st.text(max_size=100) | st.none(), st.text(max_size=100))
def test_any_origin_and_host_are_allowed_or_not(origin: str | None, host: str | None, allowed: str) -> None:
    """The Origin check never raises, whatever the headers and the setting say."""
    assert isinstance(OriginPolicy(allowed).allows(origin, host), bool)


@FUZZ
@given(st.text(max_size=400))
def test_any_token_is_an_identity_or_refused(token: str) -> None:
    """Whatever a client passes as a token, it is verified or refused with InvalidToken."""
    verifier = Verifier.from_settings(Settings(jwt_secret=SECRET))
    assert verifier is not None
    try:
        result: Identity | InvalidToken = verifier.verify(token)
    except InvalidToken as exc:
        result = exc
    assert isinstance(result, Identity) or result.detail


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=60)), max_size=5))
def test_any_headers_give_a_token_or_none(headers: list[tuple[bytes, bytes]]) -> None:
    """Reading the bearer token from arbitrary header bytes never raises."""
    result = bearer_token(headers, {})
    assert result is None or isinstance(result, str)


@FUZZ
@given(st.text(max_size=200))
def test_log_helpers_never_raise(text: str) -> None:
    """Redaction and field formatting take any text and keep lines single."""
    assert isinstance(redact(text), str)
    assert "\n" not in fields(value=text)


def multi_outcome(data: str | bytes) -> RoomRequest | RequestError:
    """What decode_multi (/ws) makes of a frame: a request or the RequestError that answers it."""
    return outcome(data, decode_multi)


@FUZZ
@given(multi_frame_objects)
def test_any_ws_frame_is_a_request_naming_a_valid_room_or_a_clean_error(obj: dict[str, Any]) -> None:
    """On /ws a frame is a request whose room is a valid name (ping: none) or an error that can be sent."""
    result = multi_outcome(json.dumps(obj))
    if isinstance(result, RequestError):
        assert result.room is None or len(result.room) <= 128
        encode_request_error(result).encode()  # what it echoes is valid UTF-8
    elif isinstance(result, Join | Leave | SendText | Typing | HistoryQuery):
        assert ROOM_PATTERN.fullmatch(result.room)
    else:
        assert isinstance(result, Ping)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_on_ws_is_a_request_or_a_clean_error(data: str) -> None:
    """Any text frame on /ws decodes to a request or raises a RequestError; plain text is never a message."""
    result = multi_outcome(data)
    if not data.lstrip().startswith("{"):
        assert isinstance(result, RequestError)
        assert result.code == "bad_request"
