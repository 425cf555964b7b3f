"""GET /metrics through Starlette's TestClient: Prometheus text whose figures move as traffic flows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from chat.app import create_app
from chat.chat import chat_of
from chat.metrics import Metrics
from chat.settings import Settings
from tests.standins import WAIT, Samples, receive, receive_type, samples_of
from tests.tokens import SECRET, token


def scrape(client: TestClient) -> Samples:
    """Every sample of /metrics as ``name{label="value"}`` -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples_of(response.text)


def scrape_until(client: TestClient, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` says the figures are there (disconnects are processed after the socket closes)."""
    deadline = time.monotonic() + WAIT
    samples = scrape(client)
    while not done(samples):
        assert time.monotonic() < deadline, f"metrics still {samples}"
        time.sleep(0.02)  # the app offers no event for "disconnect processed"; /metrics is what is observed
        samples = scrape(client)
    return samples


def test_metrics_can_be_turned_off() -> None:
    """metrics=false: no /metrics route."""
    with TestClient(create_app(Settings(metrics=False))) as plain:
        assert plain.get("/metrics").status_code == 404


def test_every_figure_is_there_from_the_start(client: TestClient) -> None:
    """Before any traffic every metric is shown (labelled ones at 0), and the backend is up."""
    samples = scrape(client)
    assert samples["chat_connections"] == 0
    assert samples["chat_rooms"] == 0
    assert samples['chat_messages_received_total{source="member"}'] == 0
    assert samples["chat_messages_delivered_total"] == 0
    assert samples['chat_errors_total{code="bad_request"}'] == 0
    assert samples["chat_rate_limited_total"] == 0
    assert samples["chat_slow_consumer_closes_total"] == 0
    assert samples['chat_refusals_total{reason="origin"}'] == 0
    assert samples['chat_policy_closes_total{reason="removed"}'] == 0
    assert samples["chat_publish_seconds_count"] == 0
    assert samples["chat_backend_up"] == 1
    assert "process_resident_memory_bytes" in samples


def test_connections_and_rooms_follow_members(client: TestClient) -> None:
    """Open connections and rooms rise with joins and fall back when members leave."""
    with client.websocket_connect("/ws/one") as first, client.websocket_connect("/ws/two") as second:
        receive_type(first, "welcome")
        receive_type(second, "welcome")
        samples = scrape(client)
        assert (samples["chat_connections"], samples["chat_rooms"]) == (2, 2)
    scrape_until(client, lambda samples: (samples["chat_connections"], samples["chat_rooms"]) == (0, 0))


def test_messages_received_and_delivered_are_counted(client: TestClient) -> None:
    """One message in a room of three: received 1, delivered 3, one publish timed."""
    with (
        client.websocket_connect("/ws/room") as ann,
        client.websocket_connect("/ws/room") as bob,
        client.websocket_connect("/ws/room") as cy,
    ):
        for session in (ann, bob, cy):
            receive_type(session, "welcome")
        ann.send_json({"type": "message", "text": "hello"})
        for session in (ann, bob, cy):
            while receive(session)["type"] != "message":
                pass
        samples = scrape(client)
    assert samples['chat_messages_received_total{source="member"}'] == 1
    assert samples["chat_messages_delivered_total"] == 3
    assert samples["chat_publish_seconds_count"] == 1


def test_errors_are_counted_by_code(client: TestClient) -> None:
    """Each error frame counts under its code."""
    with client.websocket_connect("/ws/room") as session:
        receive_type(session, "welcome")
        session.send_text("{bad")
        session.send_bytes(b"bin")
        for _ in range(2):
            receive_type(session, "error")
        samples = scrape(client)
    assert samples['chat_errors_total{code="bad_request"}'] == 1
    assert samples['chat_errors_total{code="unsupported"}'] == 1


def test_rate_limit_hits_are_counted(settings: Settings) -> None:
    """Frames refused by the rate limit count as rate-limit hits (and as rate_limited errors)."""
    app = create_app(settings.replace(rate_burst=1, rate_per_second=0.001))
    with TestClient(app) as client, client.websocket_connect("/ws/room") as session:
        receive_type(session, "welcome")
        for _ in range(3):
            session.send_json({"type": "ping"})
        receive_type(session, "pong")
        receive_type(session, "error")
        receive_type(session, "error")
        samples = scrape(client)
    assert samples["chat_rate_limited_total"] == 2
    assert samples['chat_errors_total{code="rate_limited"}'] == 2


def test_refusals_are_counted_by_reason() -> None:
    """A foreign origin and a missing token are refusals with their own reasons."""
    with TestClient(create_app(Settings(jwt_secret=SECRET))) as client:
        for headers in ({"origin": "https://evil.example"}, {}):
            with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/ws/room", headers=headers):
                pass  # pragma: no cover
        with client.websocket_connect(f"/ws/room?token={token()}") as session:
            receive_type(session, "welcome")
        samples = scrape(client)
    assert samples['chat_refusals_total{reason="origin"}'] == 1
    assert samples['chat_refusals_total{reason="token"}'] == 1


def test_render_without_an_app() -> None:
    """Metrics of one app are its own: two apps in one process do not clash or mix."""
    first, second = Metrics(Settings()), Metrics(Settings())
    first.rate_limited.inc()
    assert b"chat_rate_limited_total 1.0" in first.render()
    assert b"chat_rate_limited_total 0.0" in second.render()


def test_backend_state_changes_are_logged_and_shown(caplog: pytest.LogCaptureFixture) -> None:
    """A backend going down and up again: one structured line each, and chat_backend_up follows."""
    with TestClient(create_app(Settings())) as client, caplog.at_level(logging.INFO, logger="chat"):
        backend = chat_of({"app": client.app}).backend
        backend.state_changed(False)
        backend.state_changed(False)
        assert scrape(client)["chat_backend_up"] == 1  # a scrape checks the backend again: memory is up
        assert caplog.text.count("event=backend state=down backend=memory") == 1
        assert "event=backend state=up backend=memory" in caplog.text
