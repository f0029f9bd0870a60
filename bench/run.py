"""SyncBridge's benchmark suite: one command per scenario, one JSON line per run.

    python bench/run.py fanout   [--sessions 250 --devices 4] [--server syncbridge]
    python bench/run.py idle     [--sizes 1000,5000,10000]
    python bench/run.py connect  [--clients 2000 --in-flight 50]
    python bench/run.py persist  (fanout on Redis, no-listener acks, two processes)
    python bench/run.py baseline (fanout/idle/connect vs minimal broadcast servers
                                  and python-socketio)
    python bench/run.py profile  (py-spy of the server: fan-out, connects, Redis acks)
    python bench/run.py client   (which load-generator client is cheapest)

Each prints ONE JSON line on stdout (progress goes to stderr) and appends it to
bench/results/<scenario>.jsonl. Loopback only (127.0.0.1); the server side is
pinned to BENCH_SERVER_CPUS (default core 0), the load generator to
BENCH_CLIENT_CPUS (default core 1). Every run has a hard time limit
(--max-seconds, SIGALRM) and stops every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLIENT_CPUS,
    RESULTS,
    SERVER_CPUS,
    SERVERS,
    Redis,
    Server,
    core_busy,
    core_times,
    cpu_set,
    emit,
    log,
    mint_tokens,
    pin_self,
    raise_fd_limit,
    running_redis,
    running_server,
)
from bench.loadgen import LoadGen, unpack

# --------------------------------------------------------------------------- statistics


def percentiles(values: list[int]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds from latencies in microseconds."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, math.ceil(q * n) - 1)] / 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] / 1000, 3),
    }


# --------------------------------------------------------------------------- topology


class Fleet:
    """Sessions x devices spread over load-generator workers and server ports.

    Device 0 of each session is its writer; the others listen. Whole sessions
    live in one worker (so it counts its own expected deliveries); device d
    connects to ``ports[d % len(ports)]`` (two servers: devices split).
    """

    def __init__(
        self,
        *,
        protocol: str,
        sessions: int,
        devices: int,
        ports: Sequence[int],
        workers: int,
        writers: bool = True,
        offset: int = 0,
    ) -> None:
        self.protocol = protocol
        self.sessions = sessions
        self.devices = devices
        self.workers = workers
        tokens = (
            mint_tokens(range(offset, offset + sessions), devices)
            if protocol == "syncbridge"
            else None
        )
        self.per_worker: list[list[tuple[Any, ...]]] = [[] for _ in range(workers)]
        self.writers_per_worker = [0] * workers
        for s in range(offset, offset + sessions):
            w = s % workers
            for d in range(devices):
                writer = writers and d == 0
                self.per_worker[w].append(
                    (
                        s,
                        d,
                        ports[d % len(ports)],
                        tokens[s][d] if tokens else None,
                        writer,
                        devices - 1 if writer else 0,
                    )
                )
            if writers:
                self.writers_per_worker[w] += 1

    @property
    def total(self) -> int:
        return self.sessions * self.devices

    def connect(
        self, lg: LoadGen, *, concurrency: int, snapshot: bool = False, timeout: float = 30.0
    ) -> dict[str, Any]:
        per = max(1, concurrency // self.workers)
        t0 = time.monotonic()
        replies = lg.call(
            "connect",
            [
                {"clients": c, "concurrency": per, "snapshot": snapshot, "timeout": timeout}
                for c in self.per_worker
            ],
            timeout=timeout + 30 + self.total / 50,
        )
        wall = time.monotonic() - t0
        latencies = [v for r in replies for v in unpack(r["latencies"])]
        ok = sum(r["ok"] for r in replies)
        return {
            "clients": self.total,
            "ok": ok,
            "failed": sum(r["failed"] for r in replies),
            "failures": [f for r in replies for f in r["failures"]][:5],
            "wall_s": round(wall, 3),
            "per_s": round(ok / wall, 1) if wall else None,
            "client_cpu_s": round(sum(r["cpu"] for r in replies), 3),
            **percentiles(latencies),
        }


class CpuMeter:
    """CPU seconds of the server-side processes over an interval."""

    def __init__(self, sources: Sequence[Callable[[], float]]) -> None:
        self.sources = sources
        self.start = [s() for s in sources]
        self.cores = core_times()
        self.t0 = time.monotonic()

    def host(self, ours: dict[str, float]) -> dict[str, Any]:
        """Busy fraction of each core, and the part not explained by the benchmark
        (``ours``: the benchmark's own use per core): other work on the machine."""
        busy = core_busy(self.cores, core_times())
        foreign = {c: round(max(0.0, b - ours.get(c, 0.0)), 3) for c, b in busy.items()}
        return {"core_busy": busy, "foreign_busy": foreign}

    def read(self) -> tuple[float, float]:
        """(server-side CPU seconds, wall seconds) since creation."""
        used = sum(s() - b for s, b in zip(self.sources, self.start, strict=True))
        return used, time.monotonic() - self.t0


def run_step(
    lg: LoadGen,
    fleet: Fleet,
    *,
    step: int,
    duration: float,
    drain: float,
    deliveries_per_s: float | None = None,
    window: int | None = None,
    count: str = "deliveries",
    cpu_sources: Sequence[Callable[[], float]] = (),
    servers: Sequence[Server] = (),
) -> dict[str, Any]:
    """One load step: open loop at ``deliveries_per_s`` or closed loop with ``window``."""
    total_writers = sum(fleet.writers_per_worker)
    listeners = max(1, fleet.devices - 1)
    start_at = time.monotonic_ns() + 200_000_000
    specs = []
    for writers in fleet.writers_per_worker:
        spec: dict[str, Any] = {
            "step": step,
            "start_at": start_at,
            "duration": duration,
            "drain": drain,
            "count": count,
        }
        if window is None:
            assert deliveries_per_s is not None
            spec.update(mode="open", rate=deliveries_per_s / listeners * writers / total_writers)
        else:
            spec.update(mode="closed", window=window)
        specs.append(spec)
    meter = CpuMeter(cpu_sources)
    replies = lg.call("step", specs, timeout=duration + drain + 30)
    server_cpu, meter_wall = meter.read()
    latencies = [v for r in replies for v in unpack(r["latencies"])]
    ack_latencies = [v for r in replies for v in unpack(r["ack_latencies"])]
    last = max([r["last_recv"] for r in replies] + [r["send_end"] for r in replies])
    active_s = max(duration, (last - start_at) / 1e9)
    sent = sum(r["sent"] for r in replies)
    expected = sum(r["expected"] for r in replies)
    received = sum(r["received"] for r in replies)
    acks = sum(r["acks"] for r in replies)
    client_cpu = sum(r["cpu"] for r in replies)
    result: dict[str, Any] = {
        "step": step,
        "duration_s": duration,
        "offered_deliveries_per_s": deliveries_per_s,
        "window": window,
        "sent": sent,
        "offered_updates_per_s": round(sent / duration, 1),
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "delivered_per_s": round(received / active_s, 1),
        "acks": acks,
        "acked_per_s": round(acks / active_s, 1),
        "stale": sum(r["stale"] for r in replies),
        "errors": sum(r["errors"] for r in replies),
        "server_closes": sum(r["server_closes"] for r in replies),
        "lost_connections": sum(r["lost_connections"] for r in replies),
        "max_send_lag": max(r["max_send_lag"] for r in replies),
        "latency": percentiles(latencies),
        "ack_latency": percentiles(ack_latencies),
        # CPU of the whole load generator (all workers share its core) per wall second
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_util": round(client_cpu / active_s, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_util": round(server_cpu / active_s, 3),
    }
    # Load that is not ours on the benchmark's cores (other processes on the host):
    # a non-zero figure means the step shared its CPUs and is less trustworthy.
    host = meter.host(_ours(server_cpu / meter_wall, client_cpu / meter_wall))
    result.update(host)
    pauses = [p for s in servers if (p := s.gc_pauses(start_at, last)) is not None]
    for gen in ("gen1", "gen2"):
        if pauses:
            result[f"gc_{gen}"] = {
                "count": sum(p[gen]["count"] for p in pauses),
                "total_ms": round(sum(p[gen]["total_ms"] for p in pauses), 1),
                "max_ms": max(p[gen]["max_ms"] for p in pauses),
            }
    work = received if count == "deliveries" else acks
    if work:
        result["server_cpu_us_per_msg"] = round(server_cpu / work * 1e6, 2)
        result["client_cpu_us_per_msg"] = round(client_cpu / work * 1e6, 2)
    samples = [s for r in replies for s in r["error_samples"]]
    if samples:
        result["error_samples"] = samples[:3]
    return result


def _ours(server_util: float, client_util: float) -> dict[str, float]:
    ours: dict[str, float] = {}
    for spec, util in ((SERVER_CPUS, server_util), (CLIENT_CPUS, client_util)):
        cpus = sorted(cpu_set(spec))
        for cpu in cpus:
            ours[str(cpu)] = ours.get(str(cpu), 0.0) + util / len(cpus)
    return ours


def wait_quiet(limit: float, max_wait: float) -> dict[str, Any]:
    """Wait (at most ``max_wait`` s) until no core is busier than ``limit`` over one
    second: other work on a shared host would distort the next measurement."""
    started = time.monotonic()
    while True:
        before = core_times()
        time.sleep(1.0)
        busy = core_busy(before, core_times())
        waited = time.monotonic() - started
        if max(busy.values()) <= limit or waited >= max_wait:
            return {
                "waited_s": round(waited, 1),
                "busy": busy,
                "quiet": max(busy.values()) <= limit,
            }


def settle(cpu_sources: Sequence[Callable[[], float]], *, limit: float = 0.1) -> float:
    """Pause (1 s, up to 20 s) until the server side is idle again: a backlog from
    an overloaded step must not spill into the next one. Returns seconds waited."""
    started = time.monotonic()
    time.sleep(1.0)
    while cpu_sources and time.monotonic() - started < 20:
        meter = CpuMeter(cpu_sources)
        time.sleep(0.5)
        used, wall = meter.read()
        if used / wall < limit:
            break
    return round(time.monotonic() - started, 1)


def _disturbed(step: dict[str, Any], limit: float) -> bool:
    """Other processes took a noticeable share of our cores while the server had
    CPU to spare (a saturated server fails whatever else runs)."""
    foreign = step["foreign_busy"]
    server_core = max(foreign.get(str(c), 0.0) for c in cpu_set(SERVER_CPUS))
    client_core = max(foreign.get(str(c), 0.0) for c in cpu_set(CLIENT_CPUS))
    return step["server_cpu_util"] < 0.9 and (server_core > limit or client_core > 2 * limit)


def passed(step: dict[str, Any], p99_limit_ms: float) -> bool:
    p99 = step["latency"]["p99_ms"]
    return (
        step["lost"] == 0
        and step["errors"] == 0
        and step["server_closes"] == 0
        and step["lost_connections"] == 0
        and p99 is not None
        and p99 < p99_limit_ms
    )


def brief(step: dict[str, Any]) -> str:
    lat = step["latency"]
    return (
        f"offered {step['offered_deliveries_per_s']}/s delivered {step['delivered_per_s']}/s "
        f"lost {step['lost']} p50 {lat['p50_ms']} p99 {lat['p99_ms']} max {lat['max_ms']} ms "
        f"server cpu {step['server_cpu_util']} client cpu {step['client_cpu_util']} "
        f"foreign {step.get('foreign_busy')}"
    )


def ramp(
    lg: LoadGen,
    fleet: Fleet,
    *,
    start: float,
    factor: float,
    max_steps: int,
    refine: int,
    duration: float,
    drain: float,
    p99_limit_ms: float,
    cpu_sources: Sequence[Callable[[], float]],
    servers: Sequence[Server] = (),
    foreign_limit: float = 0.15,
    first_step: int = 100,
) -> dict[str, Any]:
    """Raise the offered rate by ``factor`` until a step fails, then bisect ``refine``
    times; the result is the best passing step (p99 < limit, nothing lost)."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    fail_rate: float | None = None
    rate = start
    number = first_step

    def attempt(r: float) -> bool:
        nonlocal best, number
        for retry in (False, True):
            result = run_step(
                lg,
                fleet,
                step=number,
                duration=duration,
                drain=drain,
                deliveries_per_s=r,
                cpu_sources=cpu_sources,
                servers=servers,
            )
            number += 1
            ok = passed(result, p99_limit_ms)
            result["passed"] = ok
            disturbed = _disturbed(result, foreign_limit)
            if ok or retry or not disturbed or result["server_closes"] or result["lost"]:
                break
            # Failed while something else ran on our cores: record it, wait, retry once.
            result["discarded"] = "foreign load; retried"
            steps.append(result)
            log("  ramp RETRY (foreign load)", brief(result))
            settle(cpu_sources)
            wait_quiet(foreign_limit, 30.0)
        steps.append(result)
        log(f"  ramp {'PASS' if ok else 'FAIL'}", brief(result))
        if ok and (best is None or result["delivered_per_s"] > best["delivered_per_s"]):
            best = result
        settle(cpu_sources)
        return ok

    for _ in range(max_steps):
        if not attempt(rate):
            fail_rate = rate
            break
        if steps[-1]["server_closes"] or steps[-1]["lost_connections"]:
            break
        rate *= factor
    if fail_rate is not None and not (steps[-1]["server_closes"] or steps[-1]["lost_connections"]):
        low = best["offered_deliveries_per_s"] if best else start / factor
        high = fail_rate
        for _ in range(refine):
            mid = (low + high) / 2
            if attempt(mid):
                low = mid
            else:
                high = mid
            if steps[-1]["server_closes"] or steps[-1]["lost_connections"]:
                break
    # Nothing passed yet (the first step already failed): walk down from the lowest rate.
    tries = 0
    while best is None and tries < 3 and steps and not steps[-1]["server_closes"]:
        tries += 1
        attempt(min(s["offered_deliveries_per_s"] for s in steps) / factor)
    return {
        "p99_limit_ms": p99_limit_ms,
        "best_delivered_per_s": best["delivered_per_s"] if best else 0.0,
        "best_offered_per_s": best["offered_deliveries_per_s"] if best else 0.0,
        "best_p99_ms": best["latency"]["p99_ms"] if best else None,
        "first_fail_offered_per_s": fail_rate,
        "steps": steps,
    }


# --------------------------------------------------------------------------- scenarios


def serve(
    kind: str, args: argparse.Namespace, env: dict[str, str] | None = None, probe: str | None = None
) -> Any:
    """running_server with the scenario's GC options (SyncBridge only)."""
    env = dict(env or {})
    if args.gc_threshold:
        env["BENCH_GC_THRESHOLD"] = args.gc_threshold
    if probe is None and (args.gc_probe or args.gc_threshold):
        probe = "gc"
    return running_server(kind, env=env, probe=probe)


def _servers_cpu(
    servers: Sequence[Server], redis: Redis | None = None
) -> list[Callable[[], float]]:
    sources: list[Callable[[], float]] = [s.cpu_seconds for s in servers]
    if redis is not None:
        sources.append(redis.cpu_seconds)
    return sources


def fanout_on(
    servers: Sequence[Server],
    args: argparse.Namespace,
    *,
    sessions: int,
    devices: int,
    redis: Redis | None = None,
    do_ramp: bool = True,
    fixed_rate: float | None = None,
) -> dict[str, Any]:
    """Connect SxD clients to ``servers`` and run the fixed-rate step and the ramp."""
    protocol = servers[0].protocol
    result: dict[str, Any] = {
        "server": servers[0].kind if len(servers) == 1 else f"{len(servers)}x{servers[0].kind}",
        "sessions": sessions,
        "devices": devices,
        "workers": args.workers,
        "client": args.client,
    }
    cpu = _servers_cpu(servers, redis)
    with LoadGen(args.workers, protocol, client=args.client, cpus=CLIENT_CPUS) as lg:
        fleet = Fleet(
            protocol=protocol,
            sessions=sessions,
            devices=devices,
            ports=[s.port for s in servers],
            workers=args.workers,
        )
        result["connect"] = fleet.connect(lg, concurrency=args.in_flight)
        log(f"{result['server']}: connected", result["connect"]["ok"], "of", fleet.total)
        rss0 = [s.rss_kib() for s in servers]
        # Warm-up (not reported): first frames on every socket, caches, allocator.
        run_step(lg, fleet, step=1, duration=1.0, drain=2.0, deliveries_per_s=500)
        if fixed_rate:
            fixed = run_step(
                lg,
                fleet,
                step=2,
                duration=args.fixed_duration,
                drain=args.drain,
                deliveries_per_s=fixed_rate,
                cpu_sources=cpu,
                servers=servers,
            )
            fixed["passed_10ms"] = passed(fixed, 10.0)
            log(f"{result['server']}: fixed", brief(fixed))
            result["fixed"] = fixed
            settle(cpu)
        if do_ramp:
            result["ramp"] = ramp(
                lg,
                fleet,
                start=args.ramp_start,
                factor=args.ramp_factor,
                max_steps=args.ramp_steps,
                refine=args.ramp_refine,
                duration=args.step_duration,
                drain=args.drain,
                p99_limit_ms=args.p99_limit,
                cpu_sources=cpu,
                servers=servers,
                foreign_limit=args.foreign_limit,
            )
            log(
                f"{result['server']}: best delivered {result['ramp']['best_delivered_per_s']}/s"
                f" (p99 {result['ramp']['best_p99_ms']} ms)"
            )
        result["server_rss_kib"] = [s.rss_kib() for s in servers]
        result["server_rss_kib_after_connect"] = rss0
        lg.call_all("close")
    return result


def scenario_fanout(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, str] = {}
    types_file = None
    if args.gc_types and args.server == "syncbridge":
        RESULTS.mkdir(parents=True, exist_ok=True)
        types_file = RESULTS / f"gc-types-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        env["BENCH_GC_TYPES"] = str(types_file)
    with serve(args.server, args, env=env, probe="gc" if types_file else None) as server:
        result = fanout_on(
            [server],
            args,
            sessions=args.sessions,
            devices=args.devices,
            do_ramp=not args.no_ramp,
            fixed_rate=args.fixed_rate or None,
        )
    if types_file is not None:
        result["gc_objects"] = _gc_types(types_file)
    return result


def _gc_types(path: Path) -> dict[str, Any]:
    """What the GC had to traverse: tracked objects after each full collection
    (written by bench/gcprobe.py with BENCH_GC_TYPES), the largest one in detail."""
    import ast

    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            _at, total, top = line.split(" ", 2)
            rows.append((int(total), ast.literal_eval(top)))
    if not rows:
        return {"full_collections": 0}
    total, top = max(rows, key=lambda r: r[0])
    return {
        "full_collections": len(rows),
        "tracked_after_each": [r[0] for r in rows],
        "largest": total,
        "largest_top_types": dict(top[:15]),
        "file": str(path.relative_to(RESULTS.parent.parent)),
    }


def idle_on(kind: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh server: warm up, RSS, N idle authenticated connections, RSS again."""
    mem_probe = args.mem_probe and kind == "syncbridge"
    snapshots: list[Path] = []
    with serve(kind, args, probe="mem" if mem_probe else None) as server:
        protocol = server.protocol
        with LoadGen(args.workers, protocol, client=args.client, cpus=CLIENT_CPUS) as lg:
            warm = Fleet(
                protocol=protocol,
                sessions=50,
                devices=args.devices,
                ports=[server.port],
                workers=args.workers,
                writers=False,
                offset=1_000_000,
            )
            warm.connect(lg, concurrency=args.in_flight)
            lg.call_all("close")
            time.sleep(1.0)
            if mem_probe:
                snapshots.append(server.mem_snapshot())
            rss_before = server.rss_kib()
            fleet = Fleet(
                protocol=protocol,
                sessions=size // args.devices,
                devices=args.devices,
                ports=[server.port],
                workers=args.workers,
                writers=False,
            )
            connect = fleet.connect(lg, concurrency=args.in_flight)
            cpu0 = server.cpu_seconds()
            time.sleep(args.hold)
            idle_cpu = server.cpu_seconds() - cpu0
            rss_after = server.rss_kib()
            if mem_probe:
                snapshots.append(server.mem_snapshot())
            status = lg.call_all("status")
            mem_top = _mem_diff(snapshots, max(1, connect["ok"])) if mem_probe else None
            open_now = sum(s["open"] for s in status)
            lg.call_all("close")
    per_conn = (rss_after - rss_before) / max(1, open_now)
    result = {
        "server": kind,
        "connections": size,
        "devices_per_session": args.devices,
        "connected": connect["ok"],
        "open_after_hold": open_now,
        "errors": connect["failed"]
        + sum(s["server_closes"] + s["lost_connections"] + s["errors"] for s in status),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_conn_kib": round(per_conn, 2),
        "idle_server_cpu_util": round(idle_cpu / args.hold, 4),
        "connect_per_s": connect["per_s"],
        "hold_s": args.hold,
    }
    if mem_top is not None:
        # tracemalloc inflates RSS: with --mem-probe the RSS figures are not comparable
        result["mem_probe"] = mem_top
    log(
        f"idle {kind} {size}: {result['rss_per_conn_kib']} KiB/conn "
        f"({rss_before}->{rss_after} KiB), open {open_now}, errors {result['errors']}"
    )
    return result


def _mem_diff(snapshots: list[Path], connections: int) -> dict[str, Any]:
    """Python allocations the connections added, by file and by line (per connection)."""
    import tracemalloc

    before, after = (tracemalloc.Snapshot.load(str(p)) for p in snapshots)

    def top(key: str, limit: int) -> list[dict[str, Any]]:
        rows = []
        for stat in after.compare_to(before, key)[:limit]:
            frame = stat.traceback[0]
            where = frame.filename if key == "filename" else f"{frame.filename}:{frame.lineno}"
            for marker in ("site-packages/", "/lib/python3", "/work/main/"):
                if marker in where:
                    where = where.split(marker, 1)[1]
            rows.append(
                {
                    "where": where,
                    "bytes_per_conn": round(stat.size_diff / connections),
                    "blocks_per_conn": round(stat.count_diff / connections, 2),
                }
            )
        return rows

    # Who asked for the memory: the innermost frame of the allocation's traceback
    # that belongs to SyncBridge, hypercorn, wsproto or h11 (trio's own objects are
    # then charged to the code that created the task, channel or cancel scope).
    owners: dict[str, int] = {}
    for stat in after.compare_to(before, "traceback"):
        owner = "other"
        for frame in reversed(stat.traceback):
            name = frame.filename
            hit = next(
                (m for m in ("syncbridge/", "hypercorn/", "wsproto/", "h11/") if m in name), None
            )
            if hit:
                owner = hit + name.split(hit, 1)[1] + f":{frame.lineno}"
                break
        owners[owner] = owners.get(owner, 0) + stat.size_diff
    by_owner = [
        {"where": k, "bytes_per_conn": round(v / connections)}
        for k, v in sorted(owners.items(), key=lambda kv: -kv[1])[:20]
    ]
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return {
        "python_bytes_per_conn": round(total / connections),
        "by_owner": by_owner,
        "by_file": top("filename", 15),
        "by_line": top("lineno", 20),
    }


def scenario_idle(args: argparse.Namespace) -> dict[str, Any]:
    runs = [idle_on(args.server, n, args) for n in _sizes(args.sizes)]
    per = [r["rss_per_conn_kib"] for r in runs]
    return {
        "server": args.server,
        "runs": runs,
        "rss_per_conn_kib": dict(zip([str(r["connections"]) for r in runs], per, strict=True)),
        "flatness": round(max(per) / min(per), 3) if per and min(per) > 0 else None,
    }


CONNECT_STEPS = {
    "syncbridge": "handshake+auth+snapshot",
    "socketio": "handshake+engine.io open+namespace connect (join)",
}


def connect_on(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with serve(kind, args) as server:
        protocol = server.protocol
        with LoadGen(args.workers, protocol, client=args.client, cpus=CLIENT_CPUS) as lg:
            fleet = Fleet(
                protocol=protocol,
                sessions=args.clients // args.devices,
                devices=args.devices,
                ports=[server.port],
                workers=args.workers,
                writers=False,
            )
            fds_idle = server.fd_count()
            tasks_idle = server.task_count()
            meter = CpuMeter([server.cpu_seconds])
            result = fleet.connect(lg, concurrency=args.in_flight, snapshot=True)
            server_cpu, wall = meter.read()
            fds_open = server.fd_count()
            tasks_open = server.task_count()
            lg.call_all("close")
            linger = (
                _linger(server, fds_idle, tasks_idle, args.linger_max) if args.linger_max else None
            )
    result.update(
        server=kind,
        in_flight=args.in_flight,
        devices_per_session=args.devices,
        steps=CONNECT_STEPS.get(protocol, "handshake+join"),
        server_cpu_util=round(server_cpu / wall, 3),
        client_cpu_util=round(result["client_cpu_s"] / wall, 3),
        server_fds={"idle": fds_idle, "connected": fds_open},
        server_tasks={"idle": tasks_idle, "connected": tasks_open},
        after_close=linger,
    )
    log(f"connect {kind}: {result['per_s']}/s p99 {result['p99_ms']} ms, failed {result['failed']}")
    return result


def _linger(server: Server, idle_fds: int, idle_tasks: int | None, limit: float) -> dict[str, Any]:
    """After every client closed: how long the server keeps their sockets and tasks
    (decision 0006: hypercorn may hold a closed WebSocket until its ping task wakes)."""
    started = time.monotonic()
    samples: dict[str, Any] = {}
    fds_released = tasks_released = None
    while time.monotonic() - started < limit:
        time.sleep(0.5)
        elapsed = time.monotonic() - started
        fds = server.fd_count()
        tasks = server.task_count()
        for mark in (1, 5, 10, 20, 30):
            if elapsed >= mark and str(mark) not in samples:
                samples[str(mark)] = {"fds": fds, "tasks": tasks}
        if fds_released is None and fds <= idle_fds + 5:
            fds_released = round(elapsed, 1)
        if tasks_released is None and (
            tasks is None or idle_tasks is None or tasks <= idle_tasks + 5
        ):
            tasks_released = round(elapsed, 1) if tasks is not None else None
        if fds_released is not None and (tasks_released is not None or tasks is None):
            break
    return {
        "at_s": samples,
        "fds_released_after_s": fds_released,
        "tasks_released_after_s": tasks_released,
        "limit_s": limit,
    }


def scenario_connect(args: argparse.Namespace) -> dict[str, Any]:
    return connect_on(args.server, args)


@contextlib.contextmanager
def syncbridge_on_redis(
    redis: Redis, count: int, args: argparse.Namespace
) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(serve("syncbridge", args, env={"REDIS_URL": redis.url}))
            for _ in range(count)
        ]


def scenario_persist(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"sessions": args.sessions, "devices": args.devices}
    with running_redis() as redis:
        result["redis"] = redis.version()
        log("persist: fan-out on Redis, one process")
        args.ramp_start = args.persist_ramp_start
        with syncbridge_on_redis(redis, 1, args) as servers:
            result["fanout"] = fanout_on(
                servers,
                args,
                sessions=args.sessions,
                devices=args.devices,
                redis=redis,
                fixed_rate=args.persist_fixed_rate,
            )
        log("persist: acknowledged updates with no listeners")
        with syncbridge_on_redis(redis, 1, args) as servers:
            with LoadGen(args.workers, "syncbridge", client=args.client, cpus=CLIENT_CPUS) as lg:
                fleet = Fleet(
                    protocol="syncbridge",
                    sessions=args.sessions,
                    devices=1,
                    ports=[servers[0].port],
                    workers=args.workers,
                    offset=100_000,
                )
                fleet.connect(lg, concurrency=args.in_flight)
                run_step(lg, fleet, step=1, duration=1.0, drain=2.0, window=1, count="acks")
                acks = run_step(
                    lg,
                    fleet,
                    step=2,
                    duration=args.step_duration,
                    drain=args.drain,
                    window=args.window,
                    count="acks",
                    cpu_sources=[servers[0].cpu_seconds],
                )
                lg.call_all("close")
            acks["redis_cpu_note"] = "server_cpu_* counts the SyncBridge process only"
            result["no_listeners"] = acks
            log(
                f"persist no listeners: {acks['acked_per_s']} acks/s, "
                f"ack p99 {acks['ack_latency']['p99_ms']} ms"
            )
        log("persist: devices of each session split over two processes")
        with syncbridge_on_redis(redis, 2, args) as servers:
            result["two_process"] = fanout_on(
                servers,
                args,
                sessions=args.sessions,
                devices=args.devices,
                redis=redis,
                do_ramp=False,
                fixed_rate=args.persist_fixed_rate,
            )
    memory = _latest("fanout", args.sessions, args.devices, "syncbridge")
    single = result["fanout"]
    two = result["two_process"]
    summary: dict[str, Any] = {
        "redis_best_delivered_per_s": single["ramp"]["best_delivered_per_s"],
        "acked_updates_per_s_no_listeners": result["no_listeners"]["acked_per_s"],
        "fixed_rate": args.persist_fixed_rate,
        "single_process_fixed_p99_ms": single["fixed"]["latency"]["p99_ms"],
        "two_process_fixed_p99_ms": two["fixed"]["latency"]["p99_ms"],
        "two_process_fixed_lost": two["fixed"]["lost"],
    }
    if summary["single_process_fixed_p99_ms"] and summary["two_process_fixed_p99_ms"]:
        summary["two_vs_single_p99"] = round(
            summary["two_process_fixed_p99_ms"] / summary["single_process_fixed_p99_ms"], 3
        )
    if memory:
        summary["memory_best_delivered_per_s"] = memory
        summary["redis_vs_memory"] = round(summary["redis_best_delivered_per_s"] / memory, 3)
    result["summary"] = summary
    return result


def _latest(scenario: str, sessions: int, devices: int, server: str) -> float | None:
    """The most recent plain (no GC experiment) ramp figure for that topology, from
    ``<scenario>.jsonl`` or the SyncBridge part of ``baseline.jsonl``."""
    found: list[tuple[str, float]] = []
    for name in (scenario, "baseline"):
        path = RESULTS / f"{name}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("gc_threshold"):
                continue
            if name == "baseline":
                record = record.get("details", {}).get(server, {}).get("fanout", {})
                stamp = json.loads(line)["time"]
            else:
                stamp = record["time"]
            if (
                record.get("server") == server
                and record.get("sessions") == sessions
                and record.get("devices") == devices
                and record.get("ramp")
            ):
                found.append((stamp, float(record["ramp"]["best_delivered_per_s"])))
    return max(found)[1] if found else None


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def scenario_baseline(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k in args.servers.split(",") if k]
    per: dict[str, Any] = {}
    for kind in kinds:
        log(f"baseline: {kind}")
        entry: dict[str, Any] = {}
        with serve(kind, args) as server:
            entry["fanout"] = fanout_on(
                [server],
                args,
                sessions=args.sessions,
                devices=args.devices,
                fixed_rate=args.fixed_rate or None,
            )
        entry["idle"] = [idle_on(kind, n, args) for n in _sizes(args.idle_sizes)]
        entry["connect"] = connect_on(kind, args)
        per[kind] = entry

    def summary(kind: str) -> dict[str, Any]:
        e = per[kind]
        f = e["fanout"]
        return {
            "fanout_best_delivered_per_s": f["ramp"]["best_delivered_per_s"],
            "fanout_fixed_p99_ms": f["fixed"]["latency"]["p99_ms"] if "fixed" in f else None,
            "fanout_server_cpu_us_per_delivery": f["fixed"].get("server_cpu_us_per_msg")
            if "fixed" in f
            else None,
            "idle_rss_per_conn_kib": {
                str(r["connections"]): r["rss_per_conn_kib"] for r in e["idle"]
            },
            "connect_per_s": e["connect"]["per_s"],
            "connect_p99_ms": e["connect"]["p99_ms"],
        }

    summaries = {k: summary(k) for k in per}
    ratios: dict[str, Any] = {}
    if "syncbridge" in summaries:
        sb = summaries["syncbridge"]
        for kind, s in summaries.items():
            if kind == "syncbridge":
                continue
            idle = {
                n: round(sb["idle_rss_per_conn_kib"][n] / v, 3)
                for n, v in s["idle_rss_per_conn_kib"].items()
                if n in sb["idle_rss_per_conn_kib"] and v
            }
            ratios[kind] = {
                "fanout_best": _ratio(
                    sb["fanout_best_delivered_per_s"], s["fanout_best_delivered_per_s"]
                ),
                "fanout_fixed_p99": _ratio(sb["fanout_fixed_p99_ms"], s["fanout_fixed_p99_ms"]),
                "idle_rss_per_conn": idle,
                "connect_per_s": _ratio(sb["connect_per_s"], s["connect_per_s"]),
            }
    return {
        "sessions": args.sessions,
        "devices": args.devices,
        "summary": summaries,
        "ratios_syncbridge_over": ratios,
        "details": per,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


class PySpy:
    """``py-spy record`` of one process for ``seconds`` (runs on the client core)."""

    def __init__(self, pid: int, seconds: float, rate: int, fmt: str, out: Path) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise SystemExit("py-spy not found: pip install -r bench/requirements.txt")
        self.seconds = seconds
        self.proc = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--duration",
                str(max(1, round(seconds))),
                "--format",
                fmt,
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait(self) -> None:
        try:
            _out, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        if self.proc.returncode:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")


def _profile_fanout(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Memory store, SxD fan-out at --fixed-rate: raw profile, then a flame graph."""
    with serve("syncbridge", args) as server:
        return _profile_fanout_on(server, args, stamp, "fanout")


def _profile_redis_fanout(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """The same fan-out on the Redis store (a private redis-server)."""
    with running_redis() as redis, syncbridge_on_redis(redis, 1, args) as servers:
        return _profile_fanout_on(servers[0], args, stamp, "redis-fanout")


def _profile_fanout_on(
    server: Server, args: argparse.Namespace, stamp: str, name: str
) -> dict[str, Any]:
    from bench.profile_summary import summarise

    raw = RESULTS / f"profile-{stamp}-{name}.txt"
    svg = RESULTS / f"profile-{stamp}-{name}.svg"
    with LoadGen(args.workers, "syncbridge", client=args.client, cpus=CLIENT_CPUS) as lg:
        fleet = Fleet(
            protocol="syncbridge",
            sessions=args.sessions,
            devices=args.devices,
            ports=[server.port],
            workers=args.workers,
        )
        fleet.connect(lg, concurrency=args.in_flight)
        run_step(lg, fleet, step=1, duration=1.0, drain=2.0, deliveries_per_s=500)
        steps = []
        for number, (fmt, out) in enumerate((("raw", raw), ("flamegraph", svg))):
            spy = PySpy(server.pid, args.profile_seconds, args.rate, fmt, out)
            step = run_step(
                lg,
                fleet,
                step=10 + number,
                duration=args.profile_seconds,
                drain=args.drain,
                deliveries_per_s=args.fixed_rate,
                cpu_sources=[server.cpu_seconds],
                servers=[server],
            )
            spy.wait()
            steps.append(step)
            log(f"profile {name}:", brief(step))
        lg.call_all("close")
    load = steps[0]
    return {
        "what": f"{name} {args.sessions}x{args.devices} at {args.fixed_rate:g} deliveries/s",
        "unit": "delivery",
        "load": load,
        "raw_profile": str(raw.relative_to(RESULTS.parent.parent)),
        "flamegraph": str(svg.relative_to(RESULTS.parent.parent)),
        "summary": summarise(
            raw.read_text(), cpu_us_per_delivery=load.get("server_cpu_us_per_msg")
        ),
    }


def _profile_connect(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Memory store: --clients connect + Auth + Snapshot, --in-flight at a time."""
    from bench.profile_summary import summarise

    raw = RESULTS / f"profile-{stamp}-connect.txt"
    with (
        serve("syncbridge", args) as server,
        LoadGen(args.workers, "syncbridge", client=args.client, cpus=CLIENT_CPUS) as lg,
    ):
        fleet = Fleet(
            protocol="syncbridge",
            sessions=args.clients // args.devices,
            devices=args.devices,
            ports=[server.port],
            workers=args.workers,
            writers=False,
        )
        meter = CpuMeter([server.cpu_seconds])
        spy = PySpy(server.pid, min(4.0, args.profile_seconds), args.rate, "raw", raw)
        connect = fleet.connect(lg, concurrency=args.in_flight, snapshot=True)
        server_cpu, _wall = meter.read()
        spy.wait()
        lg.call_all("close")
    per_connect = server_cpu / max(1, connect["ok"]) * 1e6
    log(f"profile connect: {connect['per_s']}/s, {per_connect:.0f} µs server CPU per connect")
    return {
        "what": f"{args.clients} clients connect + auth + snapshot, {args.in_flight} in flight",
        "unit": "connect (handshake + auth + snapshot)",
        "load": {**connect, "server_cpu_us_per_connect": round(per_connect, 1)},
        "raw_profile": str(raw.relative_to(RESULTS.parent.parent)),
        "summary": summarise(raw.read_text(), cpu_us_per_delivery=per_connect),
    }


def _profile_redis_acks(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Redis store, one device per session, closed loop: where an acked update goes."""
    from bench.profile_summary import summarise

    raw = RESULTS / f"profile-{stamp}-redis-acks.txt"
    with running_redis() as redis, syncbridge_on_redis(redis, 1, args) as servers:
        server = servers[0]
        with LoadGen(args.workers, "syncbridge", client=args.client, cpus=CLIENT_CPUS) as lg:
            fleet = Fleet(
                protocol="syncbridge",
                sessions=args.sessions,
                devices=1,
                ports=[server.port],
                workers=args.workers,
            )
            fleet.connect(lg, concurrency=args.in_flight)
            run_step(lg, fleet, step=1, duration=1.0, drain=2.0, window=1, count="acks")
            spy = PySpy(server.pid, args.profile_seconds, args.rate, "raw", raw)
            step = run_step(
                lg,
                fleet,
                step=2,
                duration=args.profile_seconds,
                drain=args.drain,
                window=args.window,
                count="acks",
                cpu_sources=[server.cpu_seconds],
                servers=[server],
            )
            spy.wait()
            lg.call_all("close")
    log(f"profile redis acks: {step['acked_per_s']}/s, {step.get('server_cpu_us_per_msg')} µs")
    return {
        "what": f"Redis store, {args.sessions} sessions x 1 device, closed loop",
        "unit": "acked update",
        "load": step,
        "raw_profile": str(raw.relative_to(RESULTS.parent.parent)),
        "summary": summarise(
            raw.read_text(), cpu_us_per_delivery=step.get("server_cpu_us_per_msg")
        ),
    }


PROFILES = {
    "fanout": _profile_fanout,
    "redis-fanout": _profile_redis_fanout,
    "connect": _profile_connect,
    "redis-acks": _profile_redis_acks,
}


def scenario_profile(args: argparse.Namespace) -> dict[str, Any]:
    """py-spy the SyncBridge server under load; summarise where the time goes."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    targets = [t for t in args.profiles.split(",") if t]
    return {
        "sessions": args.sessions,
        "devices": args.devices,
        "sample_rate_hz": args.rate,
        "profiles": {t: PROFILES[t](args, stamp) for t in targets},
    }


def scenario_client(args: argparse.Namespace) -> dict[str, Any]:
    """Which load-generator client is cheapest: frame-parsing micro-benchmark, then
    the same fixed-rate fan-out against the hypercorn baseline with each client."""
    from bench.client_microbench import measure

    micro = measure()
    live: dict[str, Any] = {}
    for client in ("raw", "websockets"):
        args.client = client
        with serve("hypercorn", args) as server:
            live[client] = fanout_on(
                [server],
                args,
                sessions=args.sessions,
                devices=args.devices,
                do_ramp=False,
                fixed_rate=args.fixed_rate,
            )["fixed"]
        log(f"client {client}: {live[client]['client_cpu_us_per_msg']} µs client CPU per delivery")
    return {
        "microbench_us_per_frame": micro,
        "live_client_cpu_us_per_delivery": {
            c: r.get("client_cpu_us_per_msg") for c, r in live.items()
        },
        "live": live,
    }


# --------------------------------------------------------------------------- CLI

SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fanout": scenario_fanout,
    "idle": scenario_idle,
    "connect": scenario_connect,
    "persist": scenario_persist,
    "baseline": scenario_baseline,
    "profile": scenario_profile,
    "client": scenario_client,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--server", default="syncbridge", choices=SERVERS, help="server under test")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="baseline: comma-separated servers to compare (default: all)",
    )
    p.add_argument("--workers", type=int, default=3, help="load-generator processes")
    p.add_argument("--client", default="raw", choices=("raw", "websockets"))
    p.add_argument("--sessions", type=int, default=250)
    p.add_argument("--devices", type=int, default=4, help="devices per session")
    p.add_argument("--in-flight", type=int, default=50, help="concurrent connection attempts")
    p.add_argument("--fixed-rate", type=float, default=3000, help="deliveries/s; 0 = skip")
    p.add_argument("--fixed-duration", type=float, default=8.0)
    p.add_argument("--no-ramp", action="store_true")
    p.add_argument("--ramp-start", type=float, default=3000, help="first offered deliveries/s")
    p.add_argument("--ramp-factor", type=float, default=1.6)
    p.add_argument("--ramp-steps", type=int, default=10)
    p.add_argument("--ramp-refine", type=int, default=2, help="bisection steps after a failure")
    p.add_argument("--step-duration", type=float, default=5.0, help="seconds per step")
    p.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="max wait for in-flight messages after a step (gives up after 3 s without "
        "progress); what has not arrived by then counts as lost",
    )
    p.add_argument("--p99-limit", type=float, default=50.0, help="ramp pass limit (ms)")
    p.add_argument("--sizes", default="1000,5000,10000", help="idle: connection counts")
    p.add_argument("--idle-sizes", default="5000", help="baseline: idle connection counts")
    p.add_argument("--hold", type=float, default=3.0, help="idle: seconds held before RSS")
    p.add_argument("--clients", type=int, default=2000, help="connect: clients")
    p.add_argument(
        "--linger-max",
        type=float,
        default=40.0,
        help="connect: watch the server's open fds after the clients close, up to this "
        "long (0: don't)",
    )
    p.add_argument("--window", type=int, default=1, help="persist no-listeners: acks in flight")
    p.add_argument(
        "--persist-fixed-rate",
        type=float,
        default=1000,
        help="persist: deliveries/s of the single- vs two-process comparison",
    )
    p.add_argument("--persist-ramp-start", type=float, default=500, help="persist: first ramp step")
    p.add_argument(
        "--rate",
        type=int,
        default=100,
        help="profile: py-spy samples/s (py-spy pauses the server for each sample)",
    )
    p.add_argument("--profile-seconds", type=float, default=8.0, help="profile: seconds each")
    p.add_argument(
        "--profiles",
        default="fanout,connect,redis-acks",
        help="profile: what to profile (fanout, connect, redis-acks)",
    )
    p.add_argument("--max-seconds", type=float, default=900, help="hard limit for the run")
    p.add_argument(
        "--gc-probe",
        action="store_true",
        help="start SyncBridge via bench/gcprobe.py and report full-GC pauses per step",
    )
    p.add_argument("--gc-threshold", default="", help="experiment: gc.set_threshold(a,b,c)")
    p.add_argument(
        "--gc-types",
        action="store_true",
        help="fanout: count the tracked objects by type after each full collection "
        "(adds a gc.get_objects() to each full-collection pause; diagnostics only)",
    )
    p.add_argument(
        "--mem-probe",
        action="store_true",
        help="idle: run SyncBridge under tracemalloc and report what each connection holds "
        "(RSS figures are then inflated)",
    )
    p.add_argument(
        "--foreign-limit",
        type=float,
        default=0.15,
        help="busy fraction of a core by other processes that counts as disturbed",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="wait up to this long for a quiet host before starting (0: don't)",
    )
    return p


def _alarm(_signum: int, _frame: object) -> None:
    raise TimeoutError("benchmark exceeded --max-seconds")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pin_self(CLIENT_CPUS)
    raise_fd_limit()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.max_seconds))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log(f"{args.scenario}: server cpus {SERVER_CPUS}, load generator cpus {CLIENT_CPUS}")
    started = time.monotonic()
    quiet = wait_quiet(args.foreign_limit, args.quiet_wait) if args.quiet_wait else None
    if quiet:
        log("host before start:", quiet)
    try:
        record = SCENARIOS[args.scenario](args)
    finally:
        signal.alarm(0)
    record["elapsed_s"] = round(time.monotonic() - started, 1)
    record["host_before_start"] = quiet
    record["gc_probe"] = args.gc_probe or bool(args.gc_threshold)
    record["mem_probe"] = args.mem_probe
    record["gc_types"] = args.gc_types
    if args.gc_threshold:
        record["gc_threshold"] = args.gc_threshold
    record["command"] = "python bench/run.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    emit(args.scenario, record)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
