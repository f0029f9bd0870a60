"""What the console's live feeds say: read from the running app, returned as plain data.

Nothing here writes to a socket; :mod:`syncbridge.http.console.routes` frames
these documents as server-sent events. Everything is this process's view (as
``/metrics`` is), except the session's state, version and history, which come
from the store and so include changes made through other processes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from syncbridge.auth import Claims
from syncbridge.errors import CloseCode, StoreUnavailable
from syncbridge.http.health import HealthSource, health_details
from syncbridge.metrics import CounterMetric, Metrics
from syncbridge.observe import CLOSE
from syncbridge.presence import PresenceStore
from syncbridge.protocol.session import Change
from syncbridge.service import SessionService
from syncbridge.settings import Settings

__all__ = [
    "ConnectionView",
    "ConsoleSource",
    "Sample",
    "Sampler",
    "SessionFeed",
    "describe_samples",
    "overview",
]

#: Close codes the console lists one by one: the ones an operator acts on.
NOTABLE_CLOSES: Final = frozenset({CloseCode.SLOW_CONSUMER, CloseCode.FLOODING, CloseCode.KICKED})
HOT_SESSIONS: Final = 10
RECENT_CLOSES: Final = 20
HISTORY_BACKFILL: Final = 50  # changes shown when a session is opened


class ConnectionView(Protocol):
    """What the console reads of a connection (the transport keeps these attributes)."""

    @property
    def claims(self) -> Claims | None:
        """The verified identity, once authenticated."""
        ...

    @property
    def last_seen(self) -> float:
        """trio time of the last message received."""
        ...

    @property
    def close_code(self) -> int | None:
        """The server's close code once it decided to close."""
        ...


class ConsoleSource(HealthSource, Protocol):
    """What the console reads from the running app."""

    metrics: Metrics
    presence: PresenceStore
    settings: Settings
    service: SessionService  # its observer: recent session events and update rates

    @property
    def connections(self) -> Mapping[int, ConnectionView]:
        """Open WebSocket connections by key."""
        ...


@attrs.frozen(kw_only=True)
class Sample:
    """One point of the console's charts."""

    at: float
    connections: int
    authenticated: int
    sessions: int
    deliveries_per_s: float

    def describe(self) -> dict[str, Any]:
        """The sample as the page reads it."""
        return attrs.asdict(self)


class Sampler:
    """Takes one :class:`Sample` per interval and keeps the last ``points`` of them."""

    def __init__(self, app: ConsoleSource, *, interval: float = 2.0, points: int = 300) -> None:
        self._app = app
        self.interval = interval
        self._samples: collections.deque[Sample] = collections.deque(maxlen=points)
        self._last_sent: tuple[float, float] | None = None  # (perf time, frames sent)

    @property
    def samples(self) -> list[Sample]:
        """The samples kept, oldest first."""
        return list(self._samples)

    def sample(self) -> Sample:
        """Take one sample now and keep it."""
        app = self._app
        now = time.perf_counter()
        sent = counter_total(app.metrics.messages_sent)
        rate = 0.0
        if self._last_sent is not None and now > self._last_sent[0]:
            rate = (sent - self._last_sent[1]) / (now - self._last_sent[0])
        self._last_sent = (now, sent)
        point = Sample(
            at=round(time.time(), 3),
            connections=app.active_connections,
            authenticated=app.authenticated_connections,
            sessions=app.session_count,
            deliveries_per_s=round(rate, 2),
        )
        self._samples.append(point)
        return point

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample every ``interval`` until cancelled."""
        self.sample()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.sample()


def counter_total(counter: CounterMetric) -> float:
    """The sum of a counter over all its labels."""
    return sum(Metrics.totals(counter).values())


def by_label(counter: CounterMetric, label: str) -> dict[str, float]:
    """A counter's values by one label's value."""
    return {key[0]: value for key, value in Metrics.totals(counter, label).items()}


async def overview(app: ConsoleSource, sampler: Sampler, *, after: float) -> dict[str, Any]:
    """Health, the chart points taken after ``after`` (Unix s), the hottest sessions,
    refusals and notable closes."""
    status, body = await health_details(app)
    closes = [
        {"at": e.at, "session_id": e.session_id, "device_id": e.device_id, "code": e.code}
        for e in app.service.observer.events(kind=CLOSE)
        if e.code in NOTABLE_CLOSES
    ][-RECENT_CLOSES:]
    metrics = app.metrics
    server_closes = {
        code: n
        for (code, by), n in Metrics.totals(metrics.connections_closed, "code", "by").items()
        if by == "server"
    }
    return {
        "health": {"http_status": status, **body},
        "connection_limit": app.settings.max_connections,
        "samples": describe_samples(s for s in sampler.samples if s.at > after),
        "interval": sampler.interval,
        "hot": hot_sessions(app),
        "refusals": {
            "auth": by_label(metrics.auth_failures, "reason"),
            "limits": by_label(metrics.refusals, "reason"),
            "errors": by_label(metrics.errors, "code"),
            "closes": server_closes,
        },
        "closes": list(reversed(closes)),
    }


def hot_sessions(app: ConsoleSource) -> list[dict[str, Any]]:
    """The sessions with the highest update rate, then the most devices connected here."""
    devices: dict[str, set[str]] = collections.defaultdict(set)
    connections: collections.Counter[str] = collections.Counter()
    for connection in app.connections.values():
        claims = connection.claims
        if claims is not None:
            devices[claims.session_id].add(claims.device_id)
            connections[claims.session_id] += 1
    observer = app.service.observer
    ranked = [session for session, _ in observer.hottest(HOT_SESSIONS)]
    seen = set(ranked)
    by_devices = sorted(devices, key=lambda s: len(devices[s]), reverse=True)
    ranked += [s for s in by_devices if s not in seen][: HOT_SESSIONS - len(ranked)]
    return [
        {
            "session_id": session,
            "devices": len(devices.get(session, ())),
            "connections": connections.get(session, 0),
            "version": observer.last_version(session),
            "rate": round(observer.rate(session), 3),
        }
        for session in ranked
    ]


class SessionFeed:
    """The changing picture of one session, one document per step."""

    def __init__(self, app: ConsoleSource, session_id: str) -> None:
        self._app = app
        self.session_id = session_id
        self._version: int | None = None
        self._close_seq = 0
        self._devices: Any = None

    async def step(self) -> list[tuple[str, Any]]:
        """What changed since the previous step, as (event name, data) pairs."""
        events: list[tuple[str, Any]] = []
        await self._state(events)
        devices = await self._device_list()
        if devices != self._devices:
            self._devices = devices
            events.append(("devices", devices))
        closes = [
            {"at": e.at, "device_id": e.device_id, "code": e.code}
            for e in self._app.service.observer.events(
                after=self._close_seq, session_id=self.session_id, kind=CLOSE
            )
        ]
        self._close_seq = self._app.service.observer.last_seq
        if closes:
            events.append(("closes", closes))
        return events

    async def _state(self, events: list[tuple[str, Any]]) -> None:
        store = self._app.store
        try:
            if self._version is None:
                snap = await store.snapshot(self.session_id)
                since = max(0, snap.version - HISTORY_BACKFILL)
                changes = await store.changes_since(self.session_id, since)
            else:
                changes = await store.changes_since(self.session_id, self._version)
                if changes == []:
                    return
                snap = await store.snapshot(self.session_id)
        except StoreUnavailable as exc:
            events.append(("store", {"error": exc.message}))
            return
        if changes is None:
            events.append(("gap", {"version": snap.version}))
        elif changes:
            events.append(("changes", [_change(c) for c in changes]))
        self._version = snap.version
        state = {"version": snap.version, "updated_at": snap.updated_at}
        events.append(("state", {**state, "state": snap.state_json()}))

    async def _device_list(self) -> dict[str, Any]:
        app = self._app
        local: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        now = trio.current_time()
        for key, connection in app.connections.items():
            claims = connection.claims
            if claims is not None and claims.session_id == self.session_id:
                local[claims.device_id].append(
                    {"connection": key, "idle_seconds": round(now - connection.last_seen, 1)}
                )
        try:
            listed = await app.presence.devices(self.session_id)
        except StoreUnavailable as exc:
            listed = [{"device_id": d, "error": exc.message} for d in local]
        online = [
            {**d, "connections": local.get(d["device_id"], [])}
            for d in listed
            if d.get("is_online", True)
        ]
        return {
            "devices": sorted(online, key=lambda d: str(d["device_id"])),
            "rate": round(app.service.observer.rate(self.session_id), 3),
        }


def _change(change: Change) -> dict[str, Any]:
    return {
        "version": change.version,
        "device_id": change.device_id,
        "user_id": change.user_id,
        "key": change.key,
        "operation": change.operation.value,
        "at": change.at,
    }


def describe_samples(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Chart points as the page reads them."""
    return [s.describe() for s in samples]
