"""Prometheus metrics: what the operator's dashboards read at ``GET /metrics``.

One process (the default): each app has a registry of its own, with the process's CPU, memory and
file descriptors. Several worker processes (``--workers N``): ``chat.server.run`` gives them a
shared directory (``metrics_dir``); every worker writes its figures there, and whichever worker
answers ``/metrics`` adds up all of them (prometheus-client's multiprocess mode). Gauges of workers
that stopped cleanly are dropped; counters keep what they counted.

Nothing is counted per delivered frame: a broadcast adds its member count once.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from chat.exceptions import ErrorCode
from chat.settings import Settings

CONTENT_TYPE = CONTENT_TYPE_LATEST
REFUSALS = (
    "handshake_rate",
    "connections_per_ip",
    "origin",
    "token",
    "room_not_allowed",
    "invalid_join",
    "server_full",
    "hook",
    "hook_failed",
)
POLICY_CLOSES = ("bad_frames", "rate_limited", "token_expired", "removed")
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every figure of one app; the counters are prometheus-client objects, updated where things happen."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.metrics_dir or None
        registry = CollectorRegistry() if self.directory is None else None
        self.registry = registry
        self.connections = Gauge(
            "chat_connections",
            "Open WebSocket connections that were admitted",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rooms = Gauge(
            "chat_rooms",
            "Rooms with members in this process (summed over worker processes)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.received = Counter(
            "chat_messages_received",
            "Chat messages accepted for publishing, by source (member or api)",
            ["source"],
            registry=registry,
        )
        self.delivered = Counter(
            "chat_messages_delivered", "Message frames handed to local members' sockets", registry=registry
        )
        self.errors = Counter("chat_errors", "Error frames sent to members, by code", ["code"], registry=registry)
        self.rate_limited = Counter(
            "chat_rate_limited", "Frames refused by the per-connection rate limit", registry=registry
        )
        self.slow_consumers = Counter(
            "chat_slow_consumer_closes", "Members closed with 1013 because they did not keep up", registry=registry
        )
        self.refusals = Counter(
            "chat_refusals", "Connections refused before joining, by reason", ["reason"], registry=registry
        )
        self.policy_closes = Counter(
            "chat_policy_closes", "Members closed with 1008, by reason", ["reason"], registry=registry
        )
        self.hook_failures = Counter(
            "chat_hook_failures", "Host hooks that raised or took too long, by hook", ["hook"], registry=registry
        )
        self.hook_events_dropped = Counter(
            "chat_hook_events_dropped",
            "Events not given to the host's event hooks because too many were waiting",
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "chat_publish_seconds",
            "Time to publish one message through the backend",
            registry=registry,
            buckets=PUBLISH_BUCKETS,
        )
        self.backend_up = Gauge(
            "chat_backend_up",
            "1 while the backend can serve, 0 while it cannot",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        for code in get_args(ErrorCode):
            self.errors.labels(code)
        for reason in REFUSALS:
            self.refusals.labels(reason)
        for reason in POLICY_CLOSES:
            self.policy_closes.labels(reason)
        for source in ("member", "api"):
            self.received.labels(source)
        if registry is not None:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def render(self) -> bytes:
        """The exposition text: this app's registry, or every worker's figures added up."""
        if self.directory is None:
            assert self.registry is not None
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def process_stopped(self, pid: int) -> None:
        """Drop the gauges of a worker that stopped (its counters stay counted)."""
        if self.directory is not None:
            _multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
