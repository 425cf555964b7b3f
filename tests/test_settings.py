"""Settings: defaults, CHAT_* parsing, overrides, validation and the to_env round trip."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from chat.exceptions import ConfigError
from chat.settings import Settings


def test_defaults_match_the_contract() -> None:
    """The defaults are the documented limits."""
    settings = Settings()
    assert settings.backend == "memory://"
    assert (settings.history_size, settings.history_on_join) == (1000, 50)
    assert (settings.max_text, settings.max_frame) == (4000, 65536)
    assert (settings.rate_burst, settings.rate_per_second) == (20, 10.0)


def test_empty_environment_gives_defaults() -> None:
    """No CHAT_* variables means the defaults."""
    assert Settings.from_env({}) == Settings()


def test_env_values_are_parsed_to_field_types() -> None:
    """int, float, bool and str variables become typed fields."""
    settings = Settings.from_env(
        {
            "CHAT_PORT": "9000",
            "CHAT_HISTORY_TTL": "1.5",
            "CHAT_WS_PER_MESSAGE_DEFLATE": "true",
            "CHAT_HOST": "0.0.0.0",
            "CHAT_BACKEND": "redis://localhost:6379/0",
        }
    )
    assert settings.port == 9000
    assert settings.history_ttl == 1.5
    assert settings.ws_per_message_deflate is True
    assert settings.host == "0.0.0.0"
    assert settings.backend == "redis://localhost:6379/0"


def test_env_values_are_stripped() -> None:
    """Whitespace around a value is ignored."""
    assert Settings.from_env({"CHAT_PORT": " 9001 \n"}).port == 9001


def test_blank_env_values_are_ignored() -> None:
    """An empty or blank variable counts as unset."""
    assert Settings.from_env({"CHAT_PORT": "", "CHAT_HOST": "   "}) == Settings()


def test_unrelated_variables_are_ignored() -> None:
    """Variables without the CHAT_ prefix, or not naming a setting, change nothing."""
    assert Settings.from_env({"PORT": "1", "CHAT_NOPE": "x", "chat_port": "2"}) == Settings()


def test_float_fields_accept_integers() -> None:
    """A float setting may be written as an integer."""
    assert Settings.from_env({"CHAT_RATE_PER_SECOND": "3"}).rate_per_second == 3.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_bool_spellings(raw: str, expected: bool) -> None:
    """Booleans accept 1/0, true/false, yes/no, on/off in any case."""
    assert Settings.from_env({"CHAT_WS_PER_MESSAGE_DEFLATE": raw}).ws_per_message_deflate is expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("CHAT_PORT", "abc"),
        ("CHAT_PORT", "80.5"),
        ("CHAT_MAX_TEXT", "1e3"),
        ("CHAT_HISTORY_TTL", "soon"),
        ("CHAT_WS_PER_MESSAGE_DEFLATE", "maybe"),
        ("CHAT_WS_PER_MESSAGE_DEFLATE", "2"),
    ],
)
def test_unparsable_values_raise_config_error_naming_the_variable(variable: str, raw: str) -> None:
    """A value that is not of the field's type raises ConfigError naming the variable and value."""
    with pytest.raises(ConfigError, match=variable) as caught:
        Settings.from_env({variable: raw})
    assert repr(raw) in caught.value.detail


@pytest.mark.parametrize(
    "variable",
    [
        "CHAT_HISTORY_SIZE",
        "CHAT_HISTORY_ON_JOIN",
        "CHAT_MAX_ROOMS",
        "CHAT_MAX_TEXT",
        "CHAT_MAX_FRAME",
        "CHAT_RATE_BURST",
        "CHAT_QUEUE_BYTES",
        "CHAT_MAX_CONNECTIONS",
        "CHAT_WORKERS",
        "CHAT_SEND_TIMEOUT",
        "CHAT_PRESENCE_TTL",
    ],
)
def test_positive_settings_refuse_zero(variable: str) -> None:
    """Sizes, counts and timeouts must be positive."""
    name = variable.removeprefix("CHAT_").lower()
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({variable: "0"})


@pytest.mark.parametrize(
    "variable",
    ["CHAT_HISTORY_TTL", "CHAT_RATE_PER_SECOND", "CHAT_WS_PING_INTERVAL", "CHAT_WS_PING_TIMEOUT", "CHAT_WRITE_DELAY"],
)
def test_non_negative_settings_refuse_negative_but_allow_zero(variable: str) -> None:
    """TTL, rate, ping and write delay settings may be 0 (off) but not negative."""
    name = variable.removeprefix("CHAT_").lower()
    assert getattr(Settings.from_env({variable: "0"}), name) == 0
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({variable: "-1"})


@pytest.mark.parametrize("field", ["send_timeout", "history_ttl", "rate_per_second", "presence_ttl", "write_delay"])
def test_nan_is_refused(field: str) -> None:
    """NaN passes no comparison, so it must be refused explicitly rather than slip through."""
    with pytest.raises(ConfigError, match=field):
        Settings.from_env({"CHAT_" + field.upper(): "nan"})


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_port_out_of_range_is_refused(port: str) -> None:
    """port must be 1-65535."""
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({"CHAT_PORT": port})


def test_write_delay_is_seconds_up_to_one() -> None:
    """A write delay is a fraction of a second; a value meant as milliseconds is refused, naming the unit."""
    assert Settings.from_env({"CHAT_WRITE_DELAY": "0.01"}).write_delay == 0.01
    assert Settings(write_delay=1.0).write_delay == 1.0
    with pytest.raises(ConfigError, match=re.escape("write_delay is seconds, at most 1.0, got 10")):
        Settings.from_env({"CHAT_WRITE_DELAY": "10"})


def test_history_on_join_must_not_exceed_history_size() -> None:
    """A join cannot show more history than is kept."""
    with pytest.raises(ConfigError, match="history_on_join"):
        Settings(history_size=10, history_on_join=11)


def test_history_on_join_equal_to_history_size_is_fine() -> None:
    """history_on_join may equal history_size."""
    assert Settings(history_size=10, history_on_join=10).history_on_join == 10


def test_backend_must_be_a_url() -> None:
    """backend needs a scheme such as memory:// or redis://."""
    with pytest.raises(ConfigError, match="backend"):
        Settings.from_env({"CHAT_BACKEND": "localhost:6379"})


def test_overrides_win_over_environment() -> None:
    """Explicit overrides replace what the environment says."""
    settings = Settings.from_env({"CHAT_PORT": "9000", "CHAT_MAX_TEXT": "10"}, port=9100)
    assert (settings.port, settings.max_text) == (9100, 10)


def test_none_overrides_mean_unset() -> None:
    """An override of None leaves the environment value (or default) in place."""
    settings = Settings.from_env({"CHAT_PORT": "9000"}, port=None, max_text=None)
    assert (settings.port, settings.max_text) == (9000, 4000)


def test_overrides_are_validated() -> None:
    """Overrides go through the same validation as the environment."""
    with pytest.raises(ConfigError, match="max_text"):
        Settings.from_env({}, max_text=0)


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, from_env reads the process environment."""
    monkeypatch.setenv("CHAT_MAX_ROOMS", "77")
    assert Settings.from_env().max_rooms == 77


def test_explicit_environ_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit mapping is the only source read."""
    monkeypatch.setenv("CHAT_MAX_ROOMS", "77")
    assert Settings.from_env({}).max_rooms == Settings().max_rooms


def test_to_env_names_every_field() -> None:
    """to_env has one CHAT_* variable per field."""
    assert set(Settings().to_env()) == {"CHAT_" + field.name.upper() for field in fields(Settings)}


def test_to_env_formats_bools_as_words() -> None:
    """Booleans are written as true/false."""
    assert Settings(ws_per_message_deflate=True).to_env()["CHAT_WS_PER_MESSAGE_DEFLATE"] == "true"
    assert Settings().to_env()["CHAT_WS_PER_MESSAGE_DEFLATE"] == "false"


def test_to_env_round_trips_defaults() -> None:
    """from_env(to_env()) rebuilds the default settings."""
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_to_env_round_trips_every_changed_field() -> None:
    """from_env(to_env()) rebuilds settings with every field changed, floats and bools included."""
    settings = Settings(
        backend="redis://h:1/2",
        host="::1",
        port=1,
        workers=3,
        history_size=7,
        history_on_join=7,
        history_ttl=0.25,
        max_rooms=2,
        max_text=9,
        max_frame=99,
        rate_burst=4,
        rate_per_second=0.1,
        queue_bytes=5,
        max_connections=6,
        send_timeout=0.3,
        presence_ttl=1.5,
        ws_ping_interval=0.0,
        ws_ping_timeout=2.5,
        ws_per_message_deflate=True,
        log_level="debug",
    )
    assert Settings.from_env(settings.to_env()) == settings


def test_replace_returns_a_validated_copy() -> None:
    """replace changes fields on a copy and validates the result."""
    settings = Settings()
    changed = settings.replace(max_text=5)
    assert (changed.max_text, settings.max_text) == (5, 4000)
    with pytest.raises(ConfigError):
        settings.replace(max_text=-5)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed in place."""
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "variable",
    [
        "CHAT_MAX_CONNECTIONS_PER_IP",
        "CHAT_HANDSHAKE_RATE_PER_IP",
        "CHAT_MAX_BAD_FRAMES",
        "CHAT_MAX_RATE_LIMITED_PER_MINUTE",
    ],
)
def test_abuse_limits_may_be_off_but_not_negative(variable: str) -> None:
    """Each abuse limit is turned off with 0 and refuses negative values."""
    name = variable.removeprefix("CHAT_").lower()
    assert getattr(Settings.from_env({variable: "0"}), name) == 0
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({variable: "-1"})


@pytest.mark.parametrize("variable", ["CHAT_HANDSHAKE_TIMEOUT", "CHAT_HANDSHAKE_BURST_PER_IP"])
def test_handshake_timeout_and_burst_must_be_positive(variable: str) -> None:
    """A handshake needs some time, and a bucket at least one token."""
    with pytest.raises(ConfigError, match=variable.removeprefix("CHAT_").lower()):
        Settings.from_env({variable: "0"})


def test_security_defaults_keep_the_local_run_open() -> None:
    """Out of the box: no auth, no API, metrics on, the documented abuse limits."""
    settings = Settings()
    assert not settings.auth
    assert (settings.api_key, settings.allowed_origins) == ("", "")
    assert settings.metrics
    assert (settings.max_connections_per_ip, settings.handshake_rate_per_ip, settings.handshake_burst_per_ip) == (
        100,
        50.0,
        200,
    )
    assert (settings.max_bad_frames, settings.max_rate_limited_per_minute) == (50, 200)


def test_to_env_round_trips_the_security_fields() -> None:
    """Secrets, keys, origins and limits reach worker processes intact."""
    settings = Settings(
        jwt_secret="s",
        jwt_audience="a",
        jwt_issuer="i",
        allowed_origins="https://x.example,*",
        max_connections_per_ip=0,
        handshake_rate_per_ip=2.5,
        handshake_burst_per_ip=3,
        max_bad_frames=4,
        max_rate_limited_per_minute=5,
        handshake_timeout=0.5,
        forwarded_allow_ips="*",
        api_key="k",
        metrics=False,
        metrics_dir="/tmp/m",
    )
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize("synchronous", ["full", "extra"])
def test_sqlite_commits_on_the_loop_only_without_waiting_for_the_disk(synchronous: str) -> None:
    """sqlite_writer=loop with a synchronous level that flushes every commit is refused, naming both settings."""
    Settings(sqlite_writer="loop", sqlite_synchronous="normal")
    with pytest.raises(ConfigError, match="sqlite_writer=loop needs sqlite_synchronous"):
        Settings(sqlite_writer="loop", sqlite_synchronous=synchronous)


def test_unknown_sqlite_writer_is_refused() -> None:
    """sqlite_writer is thread or loop."""
    with pytest.raises(ConfigError, match="sqlite_writer must be one of thread, loop"):
        Settings(sqlite_writer="process")
