"""Log lines: key=value fields, secrets redacted from every record, refusal lines throttled."""

from __future__ import annotations

import logging

import pytest

from chat.logs import RedactSecrets, Throttle, fields, redact
from chat.server import log_config
from tests.tokens import token

JWT = token()


def test_fields_are_key_value_pairs() -> None:
    """Plain values bare, values with spaces or quotes as JSON strings, None left out."""
    line = fields(event="connect", room="lobby", name='ann "the" lee', code=1000, missing=None)
    assert line == 'event=connect room=lobby name="ann \\"the\\" lee" code=1000'


def test_a_newline_cannot_forge_a_line() -> None:
    """A value with a newline is quoted and escaped, staying on one line."""
    assert "\n" not in fields(name="ann\nevent=forged")


@pytest.mark.parametrize(
    "text",
    [
        f"GET /ws/lobby?token={JWT} HTTP/1.1",
        f"/ws/lobby?name=ann&token={JWT}&since=3",
        f"/ws/lobby?access_token={JWT}",
        f"Authorization: Bearer {JWT}",
        f"headers={{'authorization': 'Bearer {JWT}'}}",
        f"a bare token {JWT} in a message",
    ],
)
def test_redact_removes_tokens(text: str) -> None:
    """Tokens in query strings, Authorization values and anything JWT-shaped are replaced."""
    redacted = redact(text)
    assert JWT not in redacted
    assert JWT.split(".")[2] not in redacted
    assert "[redacted]" in redacted


def test_redact_keeps_the_rest() -> None:
    """Everything but the secret stays readable."""
    assert redact("/ws/lobby?name=ann&token=abc&since=3") == "/ws/lobby?name=ann&token=[redacted]&since=3"


def test_the_filter_redacts_arguments_one_by_one() -> None:
    """uvicorn's access formatter unpacks its five arguments: they stay five, redacted."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/ws/lobby?token={JWT}", "1.1", 101),
        None,
    )
    assert RedactSecrets().filter(record)
    assert isinstance(record.args, tuple)
    assert len(record.args) == 5
    assert JWT not in record.getMessage()


def test_every_handler_of_the_server_redacts() -> None:
    """scripts/serve's logging config puts the filter on each handler."""
    config = log_config("info")
    assert config["filters"]["redact"] == {"()": "chat.logs.RedactSecrets"}
    assert all("redact" in handler["filters"] for handler in config["handlers"].values())


def test_the_throttle_holds_back_lines_over_its_rate() -> None:
    """Up to the rate in a second; then None; the next allowed line says how many were held back."""
    throttle = Throttle(2)
    assert [throttle.allow(0.0) for _ in range(4)] == [0, 0, None, None]
    assert throttle.allow(0.5) == 2
    assert throttle.allow(0.5) is None
