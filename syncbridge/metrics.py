"""Prometheus metrics of one SyncBridge process (prometheus-client's only home).

Each app has its own registry, so several apps in one process (tests) never
share counters. Label children for the fixed label values are bound once, so
counting a message on the hot path is one ``inc()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from syncbridge.errors import StoreUnavailable
from syncbridge.protocol.messages import MessageType

__all__ = ["CONTENT_TYPE", "CounterMetric", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
CounterMetric = Counter  # for readers of Metrics' counters (the console), without importing

# Latency buckets from 0.1 ms to 2.5 s: a local update takes well under a
# millisecond, a Redis round trip around one; the tail is what matters.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """Every metric SyncBridge exports, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_open_fds / process_max_fds: every WebSocket is a file descriptor,
        # so this is how close the process is to its descriptor limit (alerts.yml).
        ProcessCollector(registry=r)
        self.messages_received = Counter(
            "syncbridge_messages_received", "Messages received, by type", ["type"], registry=r
        )
        self.messages_sent = Counter(
            "syncbridge_messages_sent", "Messages sent, by type", ["type"], registry=r
        )
        self.errors = Counter(
            "syncbridge_errors", "Error replies sent, by error code", ["code"], registry=r
        )
        self.auth_failures = Counter(
            "syncbridge_auth_failures", "Refused tokens, by reason", ["reason"], registry=r
        )
        self.refusals = Counter(
            "syncbridge_refusals",
            "Requests refused, or answered with less, by a hardening limit; by reason "
            "(docs/security.md)",
            ["reason"],
            registry=r,
        )
        self.resumes = Counter(
            "syncbridge_resumes",
            "Resume (15) answers, by mode (changes or snapshot)",
            ["mode"],
            registry=r,
        )
        self.connections_opened = Counter(
            "syncbridge_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.connections_closed = Counter(
            "syncbridge_connections_closed",
            "WebSocket connections closed, by close code and side",
            ["code", "by"],
            registry=r,
        )
        self.slow_consumers = Counter(
            "syncbridge_slow_consumer_disconnects",
            "Connections closed because their outbox stayed full",
            registry=r,
        )
        self.update_store_seconds = Histogram(
            "syncbridge_update_store_seconds",
            "StateUpdate: request decoded to store accepted",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.update_seconds = Histogram(
            "syncbridge_update_seconds",
            "StateUpdate: request decoded to fan-out handed over (ack queued, broadcast queued)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "syncbridge_store_operation_seconds",
            "Store and presence operations, by operation",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "syncbridge_store_errors",
            "Store operations that failed (store unavailable), by operation",
            ["operation"],
            registry=r,
        )
        self.http_requests = Counter(
            "syncbridge_http_requests",
            "HTTP API (/v1) answers, by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.pubsub_lag_seconds = Histogram(
            "syncbridge_pubsub_lag_seconds",
            "Redis: event published to event received by this process's relay",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_connections = Gauge(
            "syncbridge_active_connections", "Open WebSocket connections", registry=r
        )
        self.authenticated_connections = Gauge(
            "syncbridge_authenticated_connections",
            "Open WebSocket connections that have authenticated",
            registry=r,
        )
        self.sessions = Gauge(
            "syncbridge_sessions_local", "Sessions with a connection in this process", registry=r
        )
        self.outbox_frames = Gauge(
            "syncbridge_outbox_queued_frames",
            "Frames queued in all outboxes, waiting for their writer",
            registry=r,
        )
        self.outbox_max_frames = Gauge(
            "syncbridge_outbox_max_queued_frames",
            "Frames queued in the fullest outbox",
            registry=r,
        )
        # What syncbridge_active_connections is compared with (alerts.yml).
        self.connection_limit = Gauge(
            "syncbridge_connection_limit",
            "MAX_CONNECTIONS: open WebSockets this process accepts; beyond, handshakes get 503",
            registry=r,
        )
        self.received = {t: self.messages_received.labels(type=t.name) for t in MessageType}
        self.received_invalid = self.messages_received.labels(type="INVALID")
        self._sent = {str(int(t)): self.messages_sent.labels(type=t.name) for t in MessageType}
        self._store_children: dict[str, tuple[Any, Any]] = {}

    def count_sent(self, frame: str) -> None:
        """Count one outgoing frame by the type at its start (frames begin ``{"type":N,``)."""
        child = self._sent.get(frame[8 : frame.find(",", 8)])
        if child is not None:
            child.inc()

    def count_refusal(self, reason: str) -> None:
        """Count one refusal (see :class:`syncbridge.refusals.RefusalLog`)."""
        self.refusals.labels(reason=reason).inc()

    def store_operation(self, operation: str) -> _StoreTimer:
        """Time one store call; count it as an error if it raises StoreUnavailable.

        A small class rather than a generator-based context manager, with the
        label children bound once per operation: this runs on every update.
        """
        children = self._store_children.get(operation)
        if children is None:
            children = self._store_children[operation] = (
                self.store_seconds.labels(operation=operation),
                self.store_errors.labels(operation=operation),
            )
        return _StoreTimer(*children)

    def bind_gauges(
        self,
        *,
        active: Callable[[], float],
        authenticated: Callable[[], float],
        sessions: Callable[[], float],
        outbox_depths: Callable[[], list[int]],
    ) -> None:
        """Gauges computed at scrape time from the running app."""
        self.active_connections.set_function(active)
        self.authenticated_connections.set_function(authenticated)
        self.sessions.set_function(sessions)
        self.outbox_frames.set_function(lambda: float(sum(outbox_depths())))
        self.outbox_max_frames.set_function(lambda: float(max(outbox_depths(), default=0)))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    @staticmethod
    def totals(counter: Counter, *labels: str) -> dict[tuple[str, ...], float]:
        """A counter's current value summed by the given labels' values (what the
        operator console shows); with no labels, the whole sum under ``()``."""
        found: dict[tuple[str, ...], float] = {}
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = tuple(sample.labels.get(label, "") for label in labels)
                    found[key] = found.get(key, 0.0) + sample.value
        return found


class _StoreTimer:
    """The context manager :meth:`Metrics.store_operation` returns."""

    __slots__ = ("_errors", "_seconds", "_started")

    def __init__(self, seconds: Any, errors: Any) -> None:
        self._seconds = seconds
        self._errors = errors
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._seconds.observe(time.perf_counter() - self._started)
        if exc_type is not None and issubclass(exc_type, StoreUnavailable):
            self._errors.inc()
