"""Protocol v1 (``/ws/{room}``) and v1.1 (``/ws``, many rooms), sans I/O: validate what clients send,
encode what the server sends.

Everything here is plain synchronous code: no sockets, no clocks, no backends.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from chat.exceptions import BadRequest, ErrorCode, Forbidden, InvalidJoin, RequestError, TooLarge, Unsupported
from chat.frames import text_frame

ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INVALID_ROOM = "invalid room: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
EPOCH_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON escapes can make them; UTF-8 cannot carry them out
MAX_NAME = 32
MAX_REF = 64
MAX_ROOM_ECHO = 128
"""An invalid room name up to this length is echoed in the error frame; a longer one is not."""
HISTORY_LIMIT_MAX = 100
HISTORY_LIMIT_DEFAULT = 50

Ref = str | int | None

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# --- what travels between members -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One member: ``id`` is the token's ``sub`` (shared by that member's connections, one per tab) or, without
    auth, a fresh random id per connection; ``name`` is what others see."""

    id: str
    name: str
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}

    @property
    def json(self) -> str:
        """``as_dict()`` as JSON, encoded once: it goes into every frame the member's name appears in."""
        encoded = self._json
        if encoded is None:
            encoded = _dumps(self.as_dict())
            object.__setattr__(self, "_json", encoded)
        return encoded

    @classmethod
    def from_json(cls, encoded: str) -> Member:
        """A member from its ``json`` (as a backend stored it), keeping that encoding."""
        data = json.loads(encoded)
        member = cls(data["id"], data["name"])
        object.__setattr__(member, "_json", encoded)
        return member


class _Framed:
    """What a broadcast event (``Message``, ``Signal``) shares: its encoded ``frame``, framed once as ``wire``."""

    if TYPE_CHECKING:  # each subclass encodes its frame in a cached property

        @property
        def frame(self) -> str: ...

    @cached_property
    def wire(self) -> bytes:
        """The frame as WebSocket bytes, framed once for every socket that gets it."""
        return text_frame(self.frame.encode())


@dataclass(frozen=True)
class Message(_Framed):
    """A stored chat message; ``seq`` rises by exactly one per message in its room."""

    room: str
    seq: int
    sender: Member
    text: str
    ts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "message",
            "room": self.room,
            "seq": self.seq,
            "from": self.sender.as_dict(),
            "text": self.text,
            "ts": self.ts,
        }

    @cached_property
    def frame(self) -> str:
        """The encoded ``message`` frame, built once however many members receive it."""
        head, tail = message_frame_parts(self.room, self.sender, self.text, self.ts)
        return f"{head}{self.seq}{tail}"

    @classmethod
    def with_frame(cls, room: str, seq: int, sender: Member, text: str, ts: int, frame: str) -> Message:
        """A message whose encoded frame is known already (a backend built or stored it)."""
        message = cls(room, seq, sender, text, ts)
        message.__dict__["frame"] = frame  # what the ``frame`` cached property would compute
        return message

    @classmethod
    def from_frame(cls, frame: str) -> Message:
        """Rebuild a message from its encoded frame (as a backend stored it)."""
        data = json.loads(frame)
        sender = data["from"]
        return cls.with_frame(
            data["room"], data["seq"], Member(sender["id"], sender["name"]), data["text"], data["ts"], frame
        )


def message_frame_parts(room: str, sender: Member, text: str, ts: int) -> tuple[str, str]:
    """A message frame in two parts, to be joined around its seq (which a backend may assign)."""
    head = '{"type":"message","room":' + _dumps(room) + ',"seq":'
    tail = ',"from":' + sender.json + ',"text":' + _dumps(text) + ',"ts":' + str(ts) + "}"
    return head, tail


SignalKind = Literal["join", "leave", "typing"]


@dataclass(frozen=True)
class Signal(_Framed):
    """A passing event (join, leave, typing) for the other members of a room; never stored."""

    kind: SignalKind
    room: str
    member: Member

    @cached_property
    def frame(self) -> str:
        key = "from" if self.kind == "typing" else "member"
        return f'{{"type":"{self.kind}","room":{_dumps(self.room)},"{key}":{self.member.json}}}'

    @classmethod
    def from_frame(cls, frame: str) -> Signal:
        """Rebuild a signal from its encoded frame (as it crossed a backend)."""
        data = json.loads(frame)
        kind = data["type"]
        if kind not in ("join", "leave", "typing"):
            raise ValueError(f"not a signal frame: {kind!r}")
        who = data["from" if kind == "typing" else "member"]
        signal = cls(kind, data["room"], Member(who["id"], who["name"]))
        signal.__dict__["frame"] = frame
        return signal


@dataclass(frozen=True)
class Restart:
    """A room's sequence restarted under a new epoch (its backend lost it): members must rejoin."""

    room: str
    epoch: str


@dataclass(frozen=True)
class Remove:
    """The operator removes a member from a room: each process closes that member's connections there."""

    room: str
    member_id: str


@dataclass(frozen=True)
class Present:
    """A room's members as the backend lists them after its events may have been missed (a dropped link)."""

    room: str
    members: tuple[Member, ...]


Event = Message | Signal | Restart | Remove | Present


# --- joining a room ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What a client asks for when it connects to ``/ws/{room}``."""

    room: str
    name: str
    since: int | None = None
    epoch: str | None = None
    batch: bool = False
    presence: bool = True
    """False: the member gets no ``join``/``leave`` frames (``members`` in its welcome still)."""


def parse_join(room: str, query: Mapping[str, str], name: str | None = None) -> JoinRequest:
    """Validate the room and the query parameters, or raise InvalidJoin saying what is wrong.

    A ``name`` given here (a token's) wins over the query's, which is then not even looked at.
    """
    if not ROOM_PATTERN.fullmatch(room):
        raise InvalidJoin(INVALID_ROOM)
    if name is None:
        name = parse_name(query.get("name"))
    since = query.get("since")
    epoch = query.get("epoch")
    if since is not None and not (since.isascii() and since.isdigit() and len(since) <= 18):
        raise InvalidJoin("since must be a non-negative integer")
    if epoch is not None and not EPOCH_PATTERN.fullmatch(epoch):
        raise InvalidJoin("epoch must be the token a welcome frame gave")
    presence = query.get("presence", "1")
    if presence not in ("0", "1"):
        raise InvalidJoin("presence must be 0 or 1")
    return JoinRequest(room, name, None if since is None else int(since), epoch, _parse_batch(query), presence == "1")


@dataclass(frozen=True, slots=True)
class Hello:
    """What a client asks for when it connects to ``/ws`` (v1.1): rooms come later, one ``join`` each."""

    name: str
    batch: bool = False


def parse_hello(query: Mapping[str, str], name: str | None = None) -> Hello:
    """Validate ``/ws``'s query parameters (v1's without ``since``/``epoch``), or raise InvalidJoin."""
    if "since" in query or "epoch" in query:
        raise InvalidJoin("since and epoch go in each join frame on /ws, not in its address")
    return Hello(parse_name(query.get("name")) if name is None else name, _parse_batch(query))


def _parse_batch(query: Mapping[str, str]) -> bool:
    batch = query.get("batch", "0")
    if batch not in ("0", "1"):
        raise InvalidJoin("batch must be 0 or 1")
    return batch == "1"


def parse_name(raw: str | None) -> str:
    """A display name: 1-32 characters after trimming, no control characters; none gets a guest name."""
    if raw is None:
        return "guest-" + secrets.token_hex(2)
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidJoin(f"name must be 1-{MAX_NAME} characters after trimming")
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name):
        raise InvalidJoin("name must not contain control characters")
    return name


def new_member_id() -> str:
    """A member id, unique per connection across processes."""
    return secrets.token_hex(6)


# --- client frames -----------------------------------------------------------------------------


# ``room`` is the room a v1.1 frame names; on v1 it stays "" (the connection's room is meant).


@dataclass(frozen=True, slots=True)
class SendText:
    text: str
    ref: Ref = None
    room: str = ""


@dataclass(frozen=True, slots=True)
class Typing:
    room: str = ""


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    before: int | None = None
    limit: int = HISTORY_LIMIT_DEFAULT
    ref: Ref = None
    room: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Join:
    """v1.1: join ``room``, recovering from ``since``/``epoch`` as v1's query parameters do."""

    room: str
    since: int | None = None
    epoch: str | None = None
    ref: Ref = None
    presence: bool = True


@dataclass(frozen=True, slots=True)
class Leave:
    """v1.1: leave ``room``."""

    room: str
    ref: Ref = None


ClientRequest = SendText | Typing | HistoryQuery | Ping
RoomRequest = SendText | Typing | HistoryQuery | Ping | Join | Leave


def decode(data: str | bytes, max_text: int) -> ClientRequest:
    """Turn one client frame into a request, or raise the RequestError that answers it.

    A text frame that is not a JSON object is a chat message made of the whole frame.
    """
    obj = _frame_object(data)
    if obj is None:
        assert isinstance(data, str)  # _frame_object refuses bytes
        return SendText(_checked_text(data, max_text, None))
    return _decode_object(obj, max_text)


def _frame_object(data: str | bytes) -> dict[str, Any] | None:
    """The frame's JSON object; None for a text frame that does not start with ``{``."""
    if isinstance(data, bytes):
        raise Unsupported("binary frames are not supported: send text frames")
    if not data.lstrip().startswith("{"):
        return None
    try:
        obj = _CLIENT_JSON.decode(data)
    except (ValueError, RecursionError):
        raise BadRequest("malformed JSON object") from None
    if not isinstance(obj, dict):
        raise BadRequest("a frame must be one JSON object")
    return obj


def _decode_object(obj: dict[str, Any], max_text: int, room: str = "") -> ClientRequest:
    ref = _checked_ref(obj.get("ref"))
    kind = obj.get("type")
    if kind == "message":
        text = obj.get("text")
        if not isinstance(text, str):
            raise BadRequest("message needs a string 'text'", ref, room or None)
        return SendText(_checked_text(text, max_text, ref, room), ref, room)
    if kind == "typing":
        return Typing(room)
    if kind == "history":
        before = _optional_int(obj, "before", 1, None, ref, room)
        limit = _optional_int(obj, "limit", 1, HISTORY_LIMIT_MAX, ref, room)
        return HistoryQuery(before, HISTORY_LIMIT_DEFAULT if limit is None else limit, ref, room)
    if kind == "ping":
        return Ping(ref)
    if not isinstance(kind, str):
        raise BadRequest("a frame needs a string 'type'", ref)
    raise BadRequest(f"unknown type {kind[:32]!r}: expected message, typing, history or ping", ref)


ROOM_FRAMES = frozenset({"join", "leave", "message", "typing", "history"})


def decode_multi(data: str | bytes, max_text: int) -> RoomRequest:
    """Turn one ``/ws`` (v1.1) client frame into a request, or raise the RequestError that answers it.

    Every frame but ``ping`` names its ``room``; there is no default room, so a frame that is not a JSON
    object is refused. Whether the room is joined is the endpoint's business.
    """
    obj = _frame_object(data)
    if obj is None:
        raise BadRequest("a frame must be one JSON object on /ws: there is no default room")
    kind = obj.get("type")
    if kind == "ping" or not isinstance(kind, str):
        return _decode_object(obj, max_text)  # a pong, or the answer to a missing or non-string type
    if kind not in ROOM_FRAMES:
        raise BadRequest(
            f"unknown type {kind[:32]!r}: expected join, leave, message, typing, history or ping",
            _checked_ref(obj.get("ref")),
        )
    room = obj.get("room")
    try:
        ref = _checked_ref(obj.get("ref"))
    except BadRequest as exc:
        exc.room = echoed_room(room) if isinstance(room, str) else None
        raise
    if not isinstance(room, str):
        raise BadRequest(f"{kind} needs a string 'room'", ref)
    if kind == "join":
        return _decode_join(obj, room, ref)
    if not ROOM_PATTERN.fullmatch(room):
        raise BadRequest(f"{kind}: not in that room (no room has that name)", ref, echoed_room(room))
    if kind == "leave":
        return Leave(room, ref)
    return _decode_object(obj, max_text, room)


def _decode_join(obj: dict[str, Any], room: str, ref: Ref) -> Join:
    if not ROOM_PATTERN.fullmatch(room):
        raise Forbidden(INVALID_ROOM, ref, echoed_room(room))
    since = _optional_int(obj, "since", 0, 2**63 - 1, ref, room)
    epoch = obj.get("epoch")
    if epoch is not None and not (isinstance(epoch, str) and EPOCH_PATTERN.fullmatch(epoch)):
        raise BadRequest("epoch must be the token a welcome frame gave", ref, room)
    presence = obj.get("presence", True)
    if not isinstance(presence, bool):
        raise BadRequest("presence must be true or false", ref, room)
    return Join(room, since, epoch, ref, presence)


def echoed_room(room: str) -> str | None:
    """A room name as an error frame may echo it: not too long, and valid Unicode."""
    return room if len(room) <= MAX_ROOM_ECHO and not _SURROGATE.search(room) else None


def check_text(text: str, max_text: int) -> str:
    """A message text as every member's must be: not blank, at most ``max_text`` characters, valid Unicode."""
    return _checked_text(text, max_text, None)


def _checked_text(text: str, max_text: int, ref: Ref, room: str = "") -> str:
    if not text.strip():
        raise BadRequest("text must not be empty", ref, room or None)
    if len(text) > max_text:
        raise TooLarge(f"text is longer than {max_text} characters", ref, room or None)
    if _SURROGATE.search(text):
        raise BadRequest("text must be valid Unicode: no lone surrogates", ref, room or None)
    return text


def _checked_ref(ref: object) -> Ref:
    if ref is None or (isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) < 2**53):
        return ref
    if isinstance(ref, str) and len(ref) <= MAX_REF and not _SURROGATE.search(ref):
        return ref
    raise BadRequest(f"ref must be a string of at most {MAX_REF} characters or an integer")


def _optional_int(obj: dict[str, Any], key: str, low: int, high: int | None, ref: Ref, room: str = "") -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise BadRequest(f"{key} must be an integer {bounds}", ref, room or None)
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_CLIENT_JSON = json.JSONDecoder(parse_constant=_reject_constant)
"""Made once: ``json.loads`` with any option builds a new decoder per call."""


# --- server frames -----------------------------------------------------------------------------


def encode_welcome(
    room: str,
    you: Member,
    members: str,
    seq: int,
    epoch: str,
    history: Sequence[Message],
    recovered: bool,
    ref: Ref = None,
) -> str:
    """The first frame a member gets in a room; ``members`` is the member list as a JSON array (encoded once
    per change of the room, ``RoomPresence.members_json``), history items the stored message frames, oldest first.

    ``ref`` is a v1.1 join's, echoed when it had one.
    """
    return (
        '{"type":"welcome","room":'
        + _dumps(room)
        + ',"you":'
        + you.json
        + ',"members":'
        + members
        + f',"seq":{seq},"epoch":{_dumps(epoch)},"recovered":{"true" if recovered else "false"},"history":['
        + ",".join(message.frame for message in history)
        + ("]}" if ref is None else '],"ref":' + _dumps(ref) + "}")
    )


def encode_hello(you: Member) -> str:
    """The first frame on ``/ws`` (v1.1): who the connection is, before any room."""
    return '{"type":"hello","you":' + you.json + "}"


def encode_left(room: str, ref: Ref, reason: str | None = None) -> str:
    """v1.1: the member is out of ``room``: it asked (``ref``), or the server took it out (``reason``)."""
    frame: dict[str, object] = {"type": "left", "room": room, "ref": ref}
    if reason is not None:
        frame["reason"] = reason
    return _dumps(frame)


def encode_ack(ref: Ref, seq: int, room: str) -> str:
    return _dumps({"type": "ack", "ref": ref, "seq": seq, "room": room})


def encode_history(room: str, messages: Sequence[Message], ref: Ref) -> str:
    return encode_messages({"type": "history", "room": room, "ref": ref}, messages)


def encode_messages(fields: dict[str, object], messages: Sequence[Message]) -> str:
    """A JSON object of ``fields`` and then ``messages``: the messages' stored frames as they are, in order."""
    head = _dumps(fields)[:-1] + ("," if fields else "")
    return head + '"messages":[' + ",".join(message.frame for message in messages) + "]}"


def encode_pong(ref: Ref) -> str:
    return _dumps({"type": "pong", "ref": ref})


def encode_error(code: ErrorCode, detail: str, ref: Ref = None, room: str | None = None) -> str:
    frame: dict[str, object] = {"type": "error", "code": code, "detail": detail, "ref": ref}
    if room is not None:
        frame["room"] = room
    return _dumps(frame)


def encode_request_error(error: RequestError) -> str:
    return encode_error(error.code, error.detail, error.ref, error.room)
