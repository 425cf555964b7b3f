"""Who may connect and who may stay, through Starlette's TestClient: tokens, origins, per-address limits, abuse."""

from __future__ import annotations

import logging

import pytest

from chat.settings import Settings
from tests.standins import ROOM, closed_with, joined, receive, receive_type, refused, serve
from tests.tokens import SECRET, token

AUTH = Settings(jwt_secret=SECRET)


# --- tokens ----------------------------------------------------------------------------------------


def test_a_valid_token_in_the_header_joins(settings: Settings) -> None:
    """Authorization: Bearer with a valid token joins, as the token's sub and name (every backend)."""
    with serve(settings.replace(jwt_secret=SECRET)) as client:
        headers = {"authorization": f"Bearer {token(sub='u-7', name='Ann')}"}
        with joined(client, headers=headers) as (_, welcome):
            assert welcome["you"] == {"id": "u-7", "name": "Ann"}


def test_a_valid_token_in_the_query_joins() -> None:
    """Browsers pass the token as ?token=."""
    with serve(AUTH) as client, joined(client, f"/ws/{ROOM}?token={token(sub='u-8')}") as (_, welcome):
        assert welcome["you"]["id"] == "u-8"


def test_the_name_comes_from_the_token_not_the_query() -> None:
    """?name= cannot override the token's name."""
    with serve(AUTH) as client, joined(client, f"/ws/{ROOM}?name=mallory&token={token(name='ann')}") as (_, welcome):
        assert welcome["you"]["name"] == "ann"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("", "token is required"),
        (f"?token={token(ttl=-10)}", "token expired"),
        (f"?token={token(secret='some-other-secret-of-enough-length')}", "bad signature"),
        ("?token=garbage", "invalid token"),
        (f"?token={token(sub=None)}", "sub"),
    ],
)
def test_a_connection_without_a_valid_token_is_refused_with_403(query: str, detail: str) -> None:
    """Missing, expired, badly signed, malformed or incomplete tokens: HTTP 403 with a JSON reason."""
    with serve(AUTH) as client:
        response = refused(client, f"/ws/{ROOM}{query}")
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "forbidden"
        assert detail in body["detail"]
        assert client.get("/healthz").json()["connections"] == 0


def test_the_rooms_claim_allows_its_rooms() -> None:
    """A token with rooms=["support-*"] joins support-1."""
    with serve(AUTH) as client, joined(client, f"/ws/support-1?token={token(rooms=['support-*'])}"):
        pass


def test_the_rooms_claim_refuses_other_rooms() -> None:
    """The same token is refused in another room with forbidden."""
    with serve(AUTH) as client:
        response = refused(client, f"/ws/{ROOM}?token={token(rooms=['support-*'])}")
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
        assert "does not allow room" in response.json()["detail"]


def test_an_expiring_token_closes_the_live_connection_with_1008() -> None:
    """When the token expires, the connection is closed with 1008 ``token expired``."""
    with serve(AUTH) as client, joined(client, f"/ws/{ROOM}?token={token(ttl=1.5)}") as (session, _):
        close = closed_with(session)
        assert (close.code, close.reason) == (1008, "token expired")


def test_two_connections_of_one_token_are_one_member() -> None:
    """Two tabs of one user: both receive, the others see one join, and a leave only when the last tab goes."""
    same = f"/ws/{ROOM}?token={token(sub='u-ann')}"
    with serve(AUTH) as client, joined(client, f"/ws/{ROOM}?token={token(sub='u-bob', name='bob')}") as (bob, _):
        with joined(client, same) as (tab1, _):
            assert receive_type(bob, "join")["member"]["id"] == "u-ann"
            with joined(client, same) as (tab2, welcome):
                assert [member["id"] for member in welcome["members"]].count("u-ann") == 1
                bob.send_json({"type": "message", "text": "hi"})
                assert receive_type(tab1, "message")["text"] == "hi"
                assert receive_type(tab2, "message")["text"] == "hi"
                assert receive_type(bob, "message")["text"] == "hi"
            bob.send_json({"type": "ping", "ref": "after-one-tab"})
            assert receive(bob) == {"type": "pong", "ref": "after-one-tab"}
        assert receive_type(bob, "leave")["member"]["id"] == "u-ann"


def test_auth_off_ignores_tokens() -> None:
    """Without a secret a token changes nothing: the query name is used."""
    with serve(Settings()) as client, joined(client, f"/ws/{ROOM}?name=ann&token=whatever") as (_, welcome):
        assert welcome["you"]["name"] == "ann"


def test_connect_and_disconnect_are_logged_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """One structured line per connect and disconnect (with the close code); the token never appears."""
    secret_token = token(sub="u-log", name="ann")
    with caplog.at_level(logging.INFO, logger="chat"), serve(AUTH) as client:
        with joined(client, f"/ws/{ROOM}?token={secret_token}") as (session, _):
            session.close(1000)
        refused(client, f"/ws/{ROOM}?token={token(ttl=-5)}")
    text = caplog.text
    assert "event=connect room=lobby member=u-log name=ann" in text
    assert "event=disconnect room=lobby member=u-log code=1000" in text
    assert "event=refused" in text
    assert "reason=token" in text
    assert secret_token not in text
    assert "eyJ" not in text


# --- origins -----------------------------------------------------------------------------------------


def test_no_origin_is_allowed() -> None:
    """TestClient, like any non-browser client, sends no Origin: allowed by default."""
    with serve(Settings()) as client, joined(client):
        pass


def test_the_same_origin_is_allowed() -> None:
    """A page of this server (Origin equals Host) connects."""
    with serve(Settings()) as client, joined(client, headers={"origin": "http://testserver"}):
        pass


def test_a_foreign_origin_is_refused_with_403() -> None:
    """A page of another site is refused before the handshake completes."""
    with serve(Settings()) as client:
        response = refused(client, headers={"origin": "https://evil.example"})
        assert response.status_code == 403
        assert response.json()["detail"] == "origin not allowed"


def test_a_listed_origin_is_allowed() -> None:
    """allowed_origins lets another site's pages in."""
    with serve(Settings(allowed_origins="https://app.example")) as client:
        with joined(client, headers={"origin": "https://app.example"}):
            pass
        assert refused(client, headers={"origin": "https://other.example"}).status_code == 403


# --- per-address limits --------------------------------------------------------------------------------


def test_connections_per_address_beyond_the_limit_get_429() -> None:
    """max_connections_per_ip open connections, then HTTP 429 rate_limited; a closed one frees its place."""
    with serve(Settings(max_connections_per_ip=2)) as client:
        with joined(client), joined(client):
            response = refused(client)
            assert response.status_code == 429
            assert response.json()["code"] == "rate_limited"
        with joined(client):
            pass


def test_handshakes_per_address_beyond_the_rate_get_429() -> None:
    """Past the burst of handshakes, HTTP 429 until the bucket refills."""
    with serve(Settings(handshake_rate_per_ip=0.001, handshake_burst_per_ip=2)) as client:
        with joined(client):
            pass
        with joined(client):
            pass
        response = refused(client)
        assert response.status_code == 429
        assert "handshakes" in response.json()["detail"]


def test_zero_turns_the_per_address_limits_off() -> None:
    """With both limits at 0, many connections from one address are fine."""
    settings = Settings(max_connections_per_ip=0, handshake_rate_per_ip=0, handshake_burst_per_ip=1)
    with serve(settings) as client, joined(client), joined(client), joined(client), joined(client):
        pass


# --- abuse ---------------------------------------------------------------------------------------------


def test_bad_frames_in_a_row_close_with_1008() -> None:
    """max_bad_frames bad frames in a row: each answered, then the connection is closed with 1008."""
    with serve(Settings(max_bad_frames=3)) as client, joined(client) as (session, _):
        for _ in range(2):
            session.send_text("{not json")
            assert receive_type(session, "error")["code"] == "bad_request"
        session.send_text("{not json")
        close = closed_with(session)
        assert close.code == 1008
        assert "bad frames" in close.reason


def test_good_frames_between_bad_ones_keep_the_connection() -> None:
    """A client that errs now and then is never closed."""
    with serve(Settings(max_bad_frames=3)) as client, joined(client) as (session, _):
        for index in range(5):
            session.send_bytes(b"binary")
            assert receive_type(session, "error")["code"] == "unsupported"
            session.send_text("x" * 5000)
            assert receive_type(session, "error")["code"] == "too_large"
            session.send_json({"type": "ping", "ref": index})
            assert receive_type(session, "pong")["ref"] == index


def test_rate_limited_frames_within_a_minute_close_with_1008() -> None:
    """max_rate_limited_per_minute refusals: the connection is closed with 1008."""
    settings = Settings(rate_burst=1, rate_per_second=0.001, max_rate_limited_per_minute=3)
    with serve(settings) as client, joined(client) as (session, _):
        session.send_json({"type": "ping", "ref": "takes the only token"})
        assert receive(session) == {"type": "pong", "ref": "takes the only token"}
        for _ in range(2):
            session.send_json({"type": "ping"})
            assert receive_type(session, "error")["code"] == "rate_limited"
        session.send_json({"type": "ping"})
        close = closed_with(session)
        assert close.code == 1008
        assert "rate limit" in close.reason


def test_abuse_closes_are_off_at_zero() -> None:
    """With both thresholds at 0, bad and rate-limited frames never close the connection."""
    settings = Settings(max_bad_frames=0, max_rate_limited_per_minute=0, rate_burst=1, rate_per_second=0.001)
    with serve(settings) as client, joined(client) as (session, _):
        for _ in range(60):
            session.send_text("{bad")
            assert receive_type(session, "error")["code"] == "bad_request"
        session.send_json({"type": "ping", "ref": "takes the only token"})
        assert receive(session) == {"type": "pong", "ref": "takes the only token"}
        for _ in range(60):
            session.send_json({"type": "ping"})
            assert receive_type(session, "error")["code"] == "rate_limited"
        session.send_text("{bad")
        assert receive_type(session, "error")["code"] == "bad_request"
