"""Protocols v1 and v1.1, sans I/O: join validation, client frame decoding, server frame encoding."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chat.exceptions import BadRequest, Forbidden, InvalidJoin, RequestError, TooLarge, Unsupported
from chat.presence import RoomPresence
from chat.protocol import (
    HISTORY_LIMIT_DEFAULT,
    Hello,
    HistoryQuery,
    Join,
    JoinRequest,
    Leave,
    Member,
    Message,
    Ping,
    RoomRequest,
    SendText,
    Signal,
    Typing,
    decode,
    decode_multi,
    encode_ack,
    encode_error,
    encode_hello,
    encode_history,
    encode_left,
    encode_pong,
    encode_request_error,
    encode_welcome,
    new_member_id,
    parse_hello,
    parse_join,
    parse_name,
)

MAX_TEXT = 4000
ALICE = Member("a1", "alice")
BOB = Member("b2", "bob")


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def decode_error(data: str | bytes, max_text: int = MAX_TEXT) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode(data, max_text)
    return caught.value


def message(seq: int, text: str = "hi", room: str = "lobby") -> Message:
    return Message(room, seq, ALICE, text, 1700000000000 + seq)


# --- joining -------------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["a", "lobby", "Room-1", "a.b_c-d", "0", "x" * 64])
def test_valid_room_names_are_accepted(room: str) -> None:
    """Room names of 1-64 letters, digits, '_', '.', '-' starting with a letter or digit pass."""
    assert parse_join(room, {"name": "al"}).room == room


@pytest.mark.parametrize("room", ["", "-a", "_a", ".a", "x" * 65, "a b", "a/b", "é", "a!", "a\n"])
def test_invalid_room_names_are_refused(room: str) -> None:
    """Any other room name is refused with InvalidJoin."""
    with pytest.raises(InvalidJoin, match="room"):
        parse_join(room, {})


def test_join_without_query_gets_guest_name_and_no_recovery() -> None:
    """A join with no query has a guest name and neither since nor epoch."""
    request = parse_join("lobby", {})
    assert re.fullmatch(r"guest-[0-9a-f]{4}", request.name)
    assert (request.since, request.epoch) == (None, None)


def test_join_parses_since_and_epoch() -> None:
    """since becomes an int and epoch is kept as given."""
    assert parse_join("lobby", {"name": "al", "since": "42", "epoch": "Ab_-9"}) == JoinRequest(
        "lobby", "al", 42, "Ab_-9"
    )


def test_join_accepts_since_zero() -> None:
    """since=0 is a valid point to recover from."""
    assert parse_join("lobby", {"since": "0", "epoch": "e"}).since == 0


@pytest.mark.parametrize("since", ["", "-1", "+1", "1.5", "abc", "1e3", " 1", "١٢", "9" * 19])
def test_invalid_since_is_refused(since: str) -> None:
    """since must be 1-18 ASCII digits."""
    with pytest.raises(InvalidJoin, match="since"):
        parse_join("lobby", {"since": since})


@pytest.mark.parametrize("epoch", ["", "a b", "a!", "é", "x" * 65, "a.b"])
def test_invalid_epoch_is_refused(epoch: str) -> None:
    """epoch must look like a token a welcome frame gave."""
    with pytest.raises(InvalidJoin, match="epoch"):
        parse_join("lobby", {"epoch": epoch})


def test_name_is_trimmed() -> None:
    """Leading and trailing whitespace is not part of the name."""
    assert parse_name("  alice \t") == "alice"


def test_name_of_32_characters_is_accepted() -> None:
    """32 characters is the longest name."""
    assert parse_name("n" * 32) == "n" * 32


@pytest.mark.parametrize("raw", ["", "   ", "n" * 33, " " + "n" * 33])
def test_name_length_outside_1_to_32_is_refused(raw: str) -> None:
    """Names empty after trimming, or longer than 32 characters, are refused."""
    with pytest.raises(InvalidJoin, match="name"):
        parse_name(raw)


@pytest.mark.parametrize("raw", ["a\x00b", "a\nb", "a\x1bb", "a\x7fb", "a\u2028b", "a\u2029b", "a\x85b"])
def test_name_with_control_characters_is_refused(raw: str) -> None:
    """Control characters (and line/paragraph separators) inside a name are refused."""
    with pytest.raises(InvalidJoin, match="control"):
        parse_name(raw)


def test_non_ascii_name_is_accepted() -> None:
    """Names are Unicode: letters beyond ASCII are fine."""
    assert parse_name("Zoë 🙂") == "Zoë 🙂"


def test_guest_names_differ() -> None:
    """Guest names are random, so two guests rarely collide."""
    assert len({parse_name(None) for _ in range(50)}) > 40


def test_member_ids_are_unique_hex() -> None:
    """Member ids are 12 hex digits and unique."""
    ids = {new_member_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{12}", member_id) for member_id in ids)


# --- decoding client frames: success -----------------------------------------------------------


def test_message_frame_decodes_to_send_text() -> None:
    """A message frame becomes SendText without a ref."""
    assert decode(frame(type="message", text="hello"), MAX_TEXT) == SendText("hello")


@pytest.mark.parametrize("ref", ["r1", 7, 0, -3, "", "x" * 64, 2**53 - 1, -(2**53 - 1)])
def test_message_frame_keeps_a_valid_ref(ref: str | int) -> None:
    """Strings up to 64 characters and integers below 2**53 in magnitude are valid refs."""
    assert decode(frame(type="message", text="hello", ref=ref), MAX_TEXT) == SendText("hello", ref)


def test_message_text_is_kept_verbatim() -> None:
    """Text keeps its surrounding whitespace and any Unicode."""
    assert decode(frame(type="message", text="  hi 🙂\n"), MAX_TEXT) == SendText("  hi 🙂\n")


def test_message_text_of_exactly_max_text_is_accepted() -> None:
    """max_text characters is the longest text."""
    assert decode(frame(type="message", text="é" * MAX_TEXT), MAX_TEXT) == SendText("é" * MAX_TEXT)


def test_plain_text_frame_is_a_message() -> None:
    """A frame that does not start with '{' is a message whose text is the whole frame."""
    assert decode("hello {world}", MAX_TEXT) == SendText("hello {world}")


@pytest.mark.parametrize("data", ["[1, 2]", "42", "null", '"quoted"', "true", "}{"])
def test_non_object_json_is_a_plain_message(data: str) -> None:
    """JSON that is not an object does not start with '{', so it is chat text."""
    assert decode(data, MAX_TEXT) == SendText(data)


def test_leading_whitespace_before_brace_is_still_parsed_as_json() -> None:
    """A frame of whitespace then '{' is read as JSON (lenient; the contract only names '{' first)."""
    assert decode('  \n{"type":"ping","ref":1}', MAX_TEXT) == Ping(1)


def test_plain_text_of_exactly_max_text_is_accepted() -> None:
    """A plain frame of max_text characters is a message."""
    assert decode("x" * MAX_TEXT, MAX_TEXT) == SendText("x" * MAX_TEXT)


def test_typing_frame_decodes() -> None:
    """A typing frame becomes Typing."""
    assert decode(frame(type="typing"), MAX_TEXT) == Typing()


def test_history_frame_defaults() -> None:
    """A bare history frame asks for the latest 50 messages."""
    assert decode(frame(type="history"), MAX_TEXT) == HistoryQuery(None, HISTORY_LIMIT_DEFAULT, None)
    assert HISTORY_LIMIT_DEFAULT == 50


def test_history_frame_with_before_limit_and_ref() -> None:
    """before, limit and ref are read from a history frame."""
    assert decode(frame(type="history", before=10, limit=5, ref="h"), MAX_TEXT) == HistoryQuery(10, 5, "h")


@pytest.mark.parametrize("limit", [1, 100])
def test_history_limit_bounds_are_accepted(limit: int) -> None:
    """limit may be anywhere from 1 to 100."""
    decoded = decode(frame(type="history", limit=limit), MAX_TEXT)
    assert isinstance(decoded, HistoryQuery)
    assert decoded.limit == limit


def test_history_null_fields_mean_defaults() -> None:
    """Explicit nulls for before and limit mean 'not given'."""
    assert decode(frame(type="history", before=None, limit=None), MAX_TEXT) == HistoryQuery(None, 50, None)


def test_ping_frame_decodes_with_and_without_ref() -> None:
    """A ping frame becomes Ping, with its ref when given."""
    assert decode(frame(type="ping"), MAX_TEXT) == Ping()
    assert decode(frame(type="ping", ref="p"), MAX_TEXT) == Ping("p")


def test_unknown_fields_are_ignored() -> None:
    """Fields the frame type does not use are ignored."""
    assert decode(frame(type="ping", extra={"a": [1]}, ref=3), MAX_TEXT) == Ping(3)


def test_big_int_ref_within_2_53_is_exact() -> None:
    """Integer refs are kept exactly (no float rounding)."""
    assert decode('{"type":"ping","ref":9007199254740991}', MAX_TEXT) == Ping(2**53 - 1)


# --- decoding client frames: errors ------------------------------------------------------------


def test_binary_frame_is_unsupported() -> None:
    """Binary frames are answered with 'unsupported'."""
    error = decode_error(b'{"type":"ping"}')
    assert isinstance(error, Unsupported)
    assert (error.code, error.ref) == ("unsupported", None)


@pytest.mark.parametrize(
    "data",
    [
        "{",
        "{}}",
        '{"type":"ping"} {}',
        "{'type':'ping'}",
        '{"type":"ping",}',
        '{"type":"message","text":"a\x01"}',
        '{"type":"ping","ref":NaN}',
        '{"type":"ping","ref":Infinity}',
        '{"type":"ping","ref":-Infinity}',
        '{"type":"history","limit":NaN}',
        '{"type":"ping","ref":' + "9" * 5000 + "}",
        '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a":' + '{"a":' * 100_000 + "1" + "}" * 100_001,
    ],
    ids=[
        "unclosed",
        "extra-brace",
        "trailing-data",
        "single-quotes",
        "trailing-comma",
        "raw-control-char",
        "nan",
        "infinity",
        "minus-infinity",
        "nan-limit",
        "huge-int",
        "deep-arrays",
        "deep-objects",
    ],
)
def test_malformed_json_is_a_bad_request(data: str) -> None:
    """Anything that starts with '{' but is not one valid JSON object is a bad request without ref."""
    error = decode_error(data)
    assert isinstance(error, BadRequest)
    assert (error.code, error.ref) == ("bad_request", None)


def test_huge_int_ref_is_a_bad_request() -> None:
    """An integer ref of 2**53 or more is refused (it would lose precision in JavaScript)."""
    error = decode_error(frame(type="ping", ref=2**53))
    assert isinstance(error, BadRequest)
    assert error.ref is None


@pytest.mark.parametrize(
    "ref", [True, False, 1.5, 1.0, [], {}, "x" * 65, -(2**53), 10**30], ids=lambda ref: type(ref).__name__
)
def test_bad_ref_is_a_bad_request_without_ref(ref: object) -> None:
    """bool, float, list, object, over-long string and huge integer refs are refused, ref null."""
    error = decode_error(frame(type="ping", ref=ref))
    assert isinstance(error, BadRequest)
    assert error.ref is None
    assert "ref" in error.detail


def test_bad_ref_is_refused_for_every_type() -> None:
    """A bad ref is refused even on frames that do not use a ref."""
    assert isinstance(decode_error(frame(type="typing", ref=True)), BadRequest)


def test_missing_type_is_a_bad_request() -> None:
    """A JSON object without a type is a bad request echoing its ref."""
    error = decode_error(frame(text="hi", ref="r"))
    assert isinstance(error, BadRequest)
    assert error.ref == "r"


@pytest.mark.parametrize("kind", [1, None, True, ["message"], {"a": 1}])
def test_non_string_type_is_a_bad_request(kind: object) -> None:
    """A type that is not a string is a bad request."""
    error = decode_error(frame(type=kind, ref=5))
    assert isinstance(error, BadRequest)
    assert error.ref == 5


@pytest.mark.parametrize("kind", ["hello", "MESSAGE", "", "welcome", "ack", "x" * 1000])
def test_unknown_type_is_a_bad_request_echoing_ref(kind: str) -> None:
    """An unknown type is a bad request naming the type (cut to 32 characters), echoing the ref."""
    error = decode_error(frame(type=kind, ref="u"))
    assert isinstance(error, BadRequest)
    assert error.ref == "u"
    assert "unknown type" in error.detail
    assert len(error.detail) < 200


@pytest.mark.parametrize("text", [None, 1, 1.5, True, ["hi"], {"t": "hi"}])
def test_message_with_non_string_text_is_a_bad_request(text: object) -> None:
    """A message frame whose text is missing or not a string is a bad request echoing its ref."""
    error = decode_error(frame(type="message", text=text, ref="m"))
    assert isinstance(error, BadRequest)
    assert error.ref == "m"


def test_message_without_text_is_a_bad_request() -> None:
    """A message frame without text is a bad request."""
    assert isinstance(decode_error(frame(type="message")), BadRequest)


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u3000"])
def test_empty_or_whitespace_text_is_a_bad_request(text: str) -> None:
    """Empty or whitespace-only text is a bad request echoing the ref."""
    error = decode_error(frame(type="message", text=text, ref=9))
    assert isinstance(error, BadRequest)
    assert error.ref == 9


@pytest.mark.parametrize("data", ["", " ", "\n", "\t \r\n"])
def test_empty_or_whitespace_plain_frame_is_a_bad_request(data: str) -> None:
    """A plain frame of nothing but whitespace is a bad request."""
    error = decode_error(data)
    assert isinstance(error, BadRequest)
    assert error.ref is None


def test_text_longer_than_max_text_is_too_large() -> None:
    """A message text of max_text + 1 characters is too large, echoing its ref."""
    error = decode_error(frame(type="message", text="x" * (MAX_TEXT + 1), ref="big"))
    assert isinstance(error, TooLarge)
    assert (error.code, error.ref) == ("too_large", "big")


def test_plain_text_longer_than_max_text_is_too_large() -> None:
    """A plain frame of max_text + 1 characters is too large."""
    error = decode_error("x" * (MAX_TEXT + 1))
    assert isinstance(error, TooLarge)
    assert error.ref is None


def test_max_text_counts_characters_not_bytes() -> None:
    """max_text is in characters: 4000 four-byte characters still fit."""
    assert decode("🙂" * MAX_TEXT, MAX_TEXT) == SendText("🙂" * MAX_TEXT)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc00\ud800"])
def test_text_with_lone_surrogates_is_a_bad_request(text: str) -> None:
    """Text with lone surrogates (possible through JSON escapes) is refused: UTF-8 cannot carry it."""
    error = decode_error(json.dumps({"type": "message", "text": text, "ref": 1}))
    assert isinstance(error, BadRequest)
    assert error.ref == 1


def test_surrogate_pair_escape_is_fine() -> None:
    """A proper surrogate-pair escape decodes to one character and is accepted."""
    assert decode('{"type":"message","text":"\\ud83d\\ude42"}', MAX_TEXT) == SendText("🙂")


def test_ref_with_lone_surrogate_is_a_bad_request() -> None:
    """A string ref with a lone surrogate is refused, since it would be echoed back."""
    error = decode_error(json.dumps({"type": "ping", "ref": "\ud800"}))
    assert isinstance(error, BadRequest)
    assert error.ref is None


@pytest.mark.parametrize(
    "fields",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "5"},
        {"limit": 5.0},
        {"limit": True},
        {"limit": 10**30},
        {"limit": [5]},
        {"before": 0},
        {"before": -1},
        {"before": "10"},
        {"before": 1.5},
        {"before": False},
    ],
    ids=lambda fields: f"{next(iter(fields))}={next(iter(fields.values()))!r}"[:40],
)
def test_history_with_bad_before_or_limit_is_a_bad_request(fields: dict[str, object]) -> None:
    """before must be an integer >= 1 and limit an integer 1-100; otherwise bad request echoing ref."""
    error = decode_error(json.dumps({"type": "history", "ref": "h", **fields}))
    assert isinstance(error, BadRequest)
    assert error.ref == "h"
    assert next(iter(fields)) in error.detail


# --- encoding server frames --------------------------------------------------------------------


def test_message_frame_has_every_field() -> None:
    """A message frame carries type, room, seq, from, text and ts."""
    assert json.loads(message(3, "héllo").frame) == {
        "type": "message",
        "room": "lobby",
        "seq": 3,
        "from": {"id": "a1", "name": "alice"},
        "text": "héllo",
        "ts": 1700000000003,
    }


def test_message_frame_is_compact_and_keeps_unicode() -> None:
    """Frames are compact JSON and keep non-ASCII characters as they are."""
    encoded = message(1, '🙂 "q" \n').frame
    assert "🙂" in encoded
    assert ", " not in encoded
    assert json.loads(encoded)["text"] == '🙂 "q" \n'


def test_message_as_dict_matches_frame() -> None:
    """as_dict and the encoded frame agree."""
    original = message(5, "x")
    assert json.loads(original.frame) == original.as_dict()


def test_message_round_trips_through_its_frame() -> None:
    """from_frame rebuilds the same message and reuses the frame."""
    original = message(7, "round trip")
    rebuilt = Message.from_frame(original.frame)
    assert rebuilt == original
    assert rebuilt.frame == original.frame


@pytest.mark.parametrize("kind", ["join", "leave"])
def test_presence_signal_frames_name_the_member(kind: str) -> None:
    """join and leave frames carry the member under 'member'."""
    signal = Signal(kind, "lobby", BOB)  # type: ignore[arg-type]
    assert json.loads(signal.frame) == {"type": kind, "room": "lobby", "member": {"id": "b2", "name": "bob"}}


def test_typing_signal_frame_names_the_sender_under_from() -> None:
    """typing frames carry the member under 'from'."""
    assert json.loads(Signal("typing", "lobby", BOB).frame) == {
        "type": "typing",
        "room": "lobby",
        "from": {"id": "b2", "name": "bob"},
    }


def test_welcome_frame_has_every_field_and_history_oldest_first() -> None:
    """The welcome frame carries room, you, members, seq, epoch, recovered and history in order."""
    history = [message(1, "one"), message(2, "two")]
    data = json.loads(
        encode_welcome("lobby", BOB, RoomPresence("lobby", [ALICE]).welcome(BOB)[0], 2, "ep", history, True)
    )
    assert data == {
        "type": "welcome",
        "room": "lobby",
        "you": {"id": "b2", "name": "bob"},
        "members": [{"id": "a1", "name": "alice"}, {"id": "b2", "name": "bob"}],
        "seq": 2,
        "epoch": "ep",
        "recovered": True,
        "history": [message(1, "one").as_dict(), message(2, "two").as_dict()],
    }


def test_welcome_frame_with_empty_history_is_valid_json() -> None:
    """A welcome with no history has an empty list."""
    data = json.loads(encode_welcome("lobby", BOB, RoomPresence("lobby", []).welcome(BOB)[0], 0, "ep", [], False))
    assert (data["history"], data["recovered"], data["seq"]) == ([], False, 0)


def test_ack_frame() -> None:
    """ack carries the ref, the seq the message got, and its room."""
    assert json.loads(encode_ack("r", 12, "lobby")) == {"type": "ack", "ref": "r", "seq": 12, "room": "lobby"}


def test_history_frame() -> None:
    """history carries room, ref and messages oldest first."""
    data = json.loads(encode_history("lobby", [message(4), message(5)], 8))
    assert data == {
        "type": "history",
        "room": "lobby",
        "ref": 8,
        "messages": [message(4).as_dict(), message(5).as_dict()],
    }


def test_history_frame_without_messages_or_ref() -> None:
    """An empty history answer has ref null and an empty list."""
    assert json.loads(encode_history("lobby", [], None)) == {
        "type": "history",
        "room": "lobby",
        "ref": None,
        "messages": [],
    }


@pytest.mark.parametrize("ref", [None, "p", 3])
def test_pong_frame_echoes_ref(ref: str | int | None) -> None:
    """pong echoes the ping's ref, null when none was given."""
    assert json.loads(encode_pong(ref)) == {"type": "pong", "ref": ref}


def test_error_frame_defaults_ref_to_null() -> None:
    """An error frame has type, code, detail and ref (null by default)."""
    assert json.loads(encode_error("bad_request", "nope")) == {
        "type": "error",
        "code": "bad_request",
        "detail": "nope",
        "ref": None,
    }


def test_request_error_encodes_code_detail_and_ref() -> None:
    """encode_request_error turns a RequestError into its error frame."""
    assert json.loads(encode_request_error(TooLarge("too long", "r"))) == {
        "type": "error",
        "code": "too_large",
        "detail": "too long",
        "ref": "r",
    }


def test_encoded_frames_of_hostile_text_stay_valid_json() -> None:
    """Quotes, backslashes, control characters and '</script>' in text survive encoding."""
    text = '"\\\x00\x1f</script>\u2028'
    assert json.loads(message(1, text).frame)["text"] == text


# --- v1.1 (/ws): the handshake -----------------------------------------------------------------


def test_hello_takes_name_and_batch() -> None:
    """/ws's query gives the name and the batch option, as v1's does."""
    assert parse_hello({"name": " ann ", "batch": "1"}) == Hello("ann", True)


def test_hello_without_name_gets_a_guest_name() -> None:
    """No name: a guest name, as on v1."""
    assert parse_hello({}).name.startswith("guest-")


def test_hello_keeps_the_tokens_name() -> None:
    """A token's name wins over the query's, which is not even checked."""
    assert parse_hello({"name": "\x00"}, "tok").name == "tok"


@pytest.mark.parametrize("query", [{"since": "3"}, {"epoch": "abc"}, {"since": "1", "epoch": "abc"}])
def test_hello_refuses_since_and_epoch(query: dict[str, str]) -> None:
    """since/epoch belong in each join on /ws: in its address they are refused, not ignored."""
    with pytest.raises(InvalidJoin, match="join frame"):
        parse_hello(query)


@pytest.mark.parametrize("query", [{"batch": "2"}, {"name": ""}, {"name": "x" * 33}])
def test_hello_refuses_what_v1_refuses(query: dict[str, str]) -> None:
    """A bad batch or name is refused as on v1."""
    with pytest.raises(InvalidJoin):
        parse_hello(query)


# --- v1.1 (/ws): decoding ------------------------------------------------------------------------


def multi(**fields: Any) -> RoomRequest:
    return decode_multi(frame(**fields), MAX_TEXT)


def test_join_decodes_with_recovery_and_ref() -> None:
    """join carries the room, since, epoch and ref."""
    assert multi(type="join", room="r", since=5, epoch="e-1", ref="j") == Join("r", 5, "e-1", "j")
    assert multi(type="join", room="r") == Join("r")


def test_leave_decodes() -> None:
    """leave carries the room and the ref."""
    assert multi(type="leave", room="r", ref=3) == Leave("r", 3)


def test_room_frames_carry_their_room() -> None:
    """message, typing and history name their room."""
    assert multi(type="message", room="r", text="hi", ref=1) == SendText("hi", 1, "r")
    assert multi(type="typing", room="r") == Typing("r")
    assert multi(type="history", room="r", before=9, limit=5, ref=2) == HistoryQuery(9, 5, 2, "r")


def test_ping_needs_no_room() -> None:
    """ping is about the connection: no room."""
    assert multi(type="ping", ref=4) == Ping(4)


@pytest.mark.parametrize("data", ["hello there", "[1]", "42", " plain {"])
def test_a_frame_that_is_not_a_json_object_is_a_bad_request(data: str) -> None:
    """There is no default room on /ws: plain text is refused, not sent anywhere."""
    with pytest.raises(BadRequest, match="JSON object"):
        decode_multi(data, MAX_TEXT)


def test_binary_frame_is_unsupported_on_ws() -> None:
    """Binary frames are unsupported on /ws too."""
    with pytest.raises(Unsupported):
        decode_multi(b"{}", MAX_TEXT)


@pytest.mark.parametrize("kind", ["join", "leave", "message", "typing", "history"])
@pytest.mark.parametrize("room", [None, 1, ["r"], {"r": 1}])
def test_a_room_frame_without_a_string_room_is_a_bad_request(kind: str, room: object) -> None:
    """Every frame but ping must name its room as a string; the error echoes the ref."""
    with pytest.raises(BadRequest, match="'room'") as caught:
        multi(type=kind, room=room, text="hi", ref="x")
    assert (caught.value.ref, caught.value.room) == ("x", None)


@pytest.mark.parametrize("room", ["", "-a", "a b", "x" * 65, "é"])
def test_joining_an_invalid_room_is_forbidden_echoing_room_and_ref(room: str) -> None:
    """An invalid room name in a join is forbidden; the error names the room and the ref."""
    with pytest.raises(Forbidden, match="invalid room") as caught:
        multi(type="join", room=room, ref=7)
    assert (caught.value.ref, caught.value.room) == (7, room)


@pytest.mark.parametrize("room", ["\ud800", "x" * 129])
def test_a_room_that_cannot_be_echoed_is_not(room: str) -> None:
    """A room name too long or not valid Unicode is not echoed back."""
    with pytest.raises(Forbidden) as caught:
        decode_multi(json.dumps({"type": "join", "room": room}), MAX_TEXT)
    assert caught.value.room is None


@pytest.mark.parametrize("kind", ["leave", "message", "typing", "history"])
def test_a_frame_for_an_invalid_room_is_a_bad_request(kind: str) -> None:
    """No room has an invalid name, so no member is in it: bad_request, room and ref echoed."""
    with pytest.raises(BadRequest) as caught:
        multi(type=kind, room="a b", text="hi", ref=1)
    assert (caught.value.ref, caught.value.room) == (1, "a b")


@pytest.mark.parametrize(
    "fields",
    [{"since": -1}, {"since": "3"}, {"since": 1.5}, {"since": True}, {"since": 2**63}, {"epoch": 5}, {"epoch": "a b"}],
)
def test_a_join_with_bad_recovery_fields_is_a_bad_request(fields: dict[str, object]) -> None:
    """since must be a non-negative integer and epoch a welcome's token; the error names the room."""
    with pytest.raises(BadRequest) as caught:
        multi(type="join", room="r", ref="j", **fields)
    assert (caught.value.ref, caught.value.room) == ("j", "r")


def test_errors_in_a_room_frame_name_the_room() -> None:
    """A refused message (empty, too long) names its room and ref."""
    with pytest.raises(BadRequest) as empty:
        multi(type="message", room="r", text=" ", ref=1)
    with pytest.raises(TooLarge) as long:
        multi(type="message", room="r", text="x" * (MAX_TEXT + 1), ref=2)
    assert [(error.value.ref, error.value.room) for error in (empty, long)] == [(1, "r"), (2, "r")]


@pytest.mark.parametrize("kind", [None, 1, ["join"], {"a": 1}])
def test_a_non_string_type_on_ws_is_a_bad_request(kind: object) -> None:
    """A type that is not a string is refused on /ws too (not a crash)."""
    with pytest.raises(BadRequest, match="string 'type'"):
        multi(type=kind, room="r")


@pytest.mark.parametrize("kind", ["hello", "welcome", "left", "x" * 100])
def test_unknown_type_on_ws_is_a_bad_request_listing_the_types(kind: str) -> None:
    """An unknown type is refused, naming what /ws understands, with the ref."""
    with pytest.raises(BadRequest, match="expected join, leave") as caught:
        multi(type=kind, ref=5)
    assert caught.value.ref == 5


def test_v1_ignores_a_room_field() -> None:
    """On v1 a room in a frame is an unknown field: ignored, the connection's room is meant."""
    assert decode(frame(type="message", room="elsewhere", text="hi"), MAX_TEXT) == SendText("hi")


# --- v1.1 (/ws): encoding -------------------------------------------------------------------------


def test_hello_frame_names_the_member() -> None:
    """hello says who the connection is."""
    assert json.loads(encode_hello(ALICE)) == {"type": "hello", "you": {"id": "a1", "name": "alice"}}


def test_left_frame_answers_a_leave_with_its_ref() -> None:
    """left names the room and the leave's ref (null without one)."""
    assert json.loads(encode_left("r", "x")) == {"type": "left", "room": "r", "ref": "x"}
    assert json.loads(encode_left("r", None)) == {"type": "left", "room": "r", "ref": None}


def test_left_frame_says_why_the_server_took_the_member_out() -> None:
    """A left the member did not ask for carries the reason."""
    assert json.loads(encode_left("r", None, "removed")) == {
        "type": "left",
        "room": "r",
        "ref": None,
        "reason": "removed",
    }


def test_welcome_echoes_a_joins_ref_only_when_it_had_one() -> None:
    """A welcome answering a join with a ref carries it; without one it is exactly v1's welcome."""
    plain = json.loads(encode_welcome("r", ALICE, '[{"id":"a1","name":"alice"}]', 0, "e", [], False))
    with_ref = json.loads(encode_welcome("r", ALICE, '[{"id":"a1","name":"alice"}]', 0, "e", [], False, "j1"))
    assert "ref" not in plain
    assert with_ref == {**plain, "ref": "j1"}


def test_error_frame_names_the_room_the_request_named() -> None:
    """An error carries the room when the refused request named one, and no room key otherwise."""
    assert json.loads(encode_request_error(BadRequest("no", 1, "r")))["room"] == "r"
    assert "room" not in json.loads(encode_request_error(BadRequest("no", 1)))


def test_a_bad_ref_in_a_room_frame_still_names_the_room() -> None:
    """A ref that cannot be echoed is left out, but the room the frame named is still given back."""
    with pytest.raises(BadRequest, match="ref must be") as caught:
        multi(type="join", room="r1", ref=["no"])
    assert (caught.value.ref, caught.value.room) == (None, "r1")


# --- presence=0 ----------------------------------------------------------------------------------


def test_a_join_wants_presence_unless_it_says_presence_0() -> None:
    """v1's presence query parameter: 1 by default, 0 turns join/leave frames off."""
    assert parse_join("r", {}).presence is True
    assert parse_join("r", {"presence": "1"}).presence is True
    assert parse_join("r", {"presence": "0"}).presence is False


@pytest.mark.parametrize("value", ["", "2", "no", "false"])
def test_a_bad_presence_parameter_is_refused(value: str) -> None:
    """presence must be 0 or 1."""
    with pytest.raises(InvalidJoin, match="presence"):
        parse_join("r", {"presence": value})


def test_a_ws_join_carries_presence() -> None:
    """On /ws presence is a join's boolean, true by default."""
    assert multi(type="join", room="r") == Join("r", presence=True)
    assert multi(type="join", room="r", presence=False) == Join("r", presence=False)


@pytest.mark.parametrize("value", [0, 1, "false", None, []])
def test_a_ws_join_with_a_non_boolean_presence_is_a_bad_request(value: object) -> None:
    """A join's presence must be true or false; null is not a default here."""
    with pytest.raises(BadRequest, match="presence") as caught:
        multi(type="join", room="r", presence=value, ref=1)
    assert (caught.value.ref, caught.value.room) == (1, "r")
