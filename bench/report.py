"""Markdown tables from the newest line of each bench/results/<scenario>.jsonl.

python bench/report.py            # prints the tables used in docs/performance.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def latest(scenario: str, **match: Any) -> dict[str, Any] | None:
    path = RESULTS / f"{scenario}.jsonl"
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        record = json.loads(line)
        if all(record.get(k) == v for k, v in match.items()):
            return record
    return None


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{2 if abs(value) < 10 else digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _step_row(label: str, s: dict[str, Any]) -> list[Any]:
    lat = s["latency"]
    gc = s.get("gc_gen2", {})
    return [
        label,
        s["offered_deliveries_per_s"],
        s["delivered_per_s"],
        s["lost"],
        lat["p50_ms"],
        lat["p95_ms"],
        lat["p99_ms"],
        lat["max_ms"],
        s["server_cpu_util"],
        s["client_cpu_util"],
        s.get("server_cpu_us_per_msg"),
        gc.get("max_ms") if gc else None,
        max(s["foreign_busy"].values()),
        "pass" if s.get("passed") else ("fail" if "passed" in s else ""),
    ]


STEP_HEADERS = [
    "step",
    "offered/s",
    "delivered/s",
    "lost",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "server CPU",
    "client CPU",
    "server µs/delivery",
    "full GC max ms",
    "foreign load",
    "ramp",
]


def fanout_section(record: dict[str, Any], title: str) -> str:
    rows = []
    if "fixed" in record:
        rows.append(_step_row("fixed", record["fixed"]))
    for step in record.get("ramp", {}).get("steps", []):
        label = "ramp" + (" (discarded)" if step.get("discarded") else "")
        rows.append(_step_row(label, step))
    ramp = record.get("ramp", {})
    head = (
        f"**{title}** — {record['server']}, {record['sessions']}x{record['devices']}, "
        f"connect {record['connect']['per_s']}/s; best delivered with p99 < "
        f"{ramp.get('p99_limit_ms')} ms: **{_f(ramp.get('best_delivered_per_s'))}/s**"
    )
    return head + "\n\n" + table(STEP_HEADERS, rows)


def main() -> int:
    parts: list[str] = []
    base = latest("baseline")
    if base:
        s = base["summary"]
        rows = []
        for kind, v in s.items():
            idle = v["idle_rss_per_conn_kib"]
            rows.append(
                [
                    kind,
                    v["fanout_best_delivered_per_s"],
                    v["fanout_fixed_p99_ms"],
                    v["fanout_server_cpu_us_per_delivery"],
                    ", ".join(f"{k}: {x}" for k, x in idle.items()),
                    v["connect_per_s"],
                    v["connect_p99_ms"],
                ]
            )
        parts.append(
            "### Baseline comparison (same run)\n\n"
            + table(
                [
                    "server",
                    "fan-out best/s (p99<50ms)",
                    "p99 @ fixed ms",
                    "server µs/delivery @ fixed",
                    "idle KiB/conn",
                    "connects/s",
                    "connect p99 ms",
                ],
                rows,
            )
        )
        ratio_rows = [
            [
                k,
                r["fanout_best"],
                r["fanout_fixed_p99"],
                ", ".join(f"{n}: {x}" for n, x in r["idle_rss_per_conn"].items()),
                r["connect_per_s"],
            ]
            for k, r in base["ratios_syncbridge_over"].items()
        ]
        parts.append(
            "SyncBridge ÷ baseline:\n\n"
            + table(
                ["baseline", "fan-out best", "fixed p99", "idle KiB/conn", "connects/s"],
                ratio_rows,
            )
        )
        for kind, detail in base["details"].items():
            parts.append(fanout_section(detail["fanout"], f"baseline run: {kind}"))
    for sessions in (250, 1000):
        rec = latest(
            "fanout", sessions=sessions, server="syncbridge", gc_threshold=None, gc_types=None
        )
        if rec:
            parts.append(fanout_section(rec, f"fanout {sessions}x4"))
    for threshold in ("700,10,1000000", "50000,20,10"):
        experiment = latest("fanout", server="syncbridge", gc_threshold=threshold)
        if experiment:
            parts.append(fanout_section(experiment, f"experiment: gc.set_threshold({threshold})"))
    types = latest("fanout", server="syncbridge", gc_types=True)
    if types and types.get("gc_objects", {}).get("largest"):
        g = types["gc_objects"]
        parts.append(
            f"### Tracked objects at the largest full collection: {g['largest']:,}\n\n"
            + table(["type", "objects"], [[k, v] for k, v in g["largest_top_types"].items()])
        )
    mem = latest("idle", server="syncbridge", mem_probe=True)
    if mem and mem["runs"][0].get("mem_probe"):
        m = mem["runs"][0]["mem_probe"]
        parts.append(
            f"### What an idle connection holds (tracemalloc, {mem['runs'][0]['connections']}"
            f" connections; Python allocations {m['python_bytes_per_conn']:,} B/conn)\n\n"
            + table(
                ["allocated by (innermost SyncBridge/hypercorn/wsproto/h11 frame)", "B/conn"],
                [[r["where"], r["bytes_per_conn"]] for r in m["by_owner"]],
            )
        )
    idle = latest("idle", server="syncbridge", mem_probe=False)
    if idle:
        parts.append(
            "### Idle\n\n"
            + table(
                [
                    "connections",
                    "open after hold",
                    "errors",
                    "RSS before KiB",
                    "RSS after KiB",
                    "KiB/conn",
                    "idle server CPU",
                ],
                [
                    [
                        r["connections"],
                        r["open_after_hold"],
                        r["errors"],
                        r["rss_before_kib"],
                        r["rss_after_kib"],
                        r["rss_per_conn_kib"],
                        r["idle_server_cpu_util"],
                    ]
                    for r in idle["runs"]
                ],
            )
        )
    conn = latest("connect", server="syncbridge")
    if conn:
        parts.append(
            "### Connect\n\n"
            + table(
                [
                    "clients",
                    "ok",
                    "failed",
                    "per s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU",
                    "client CPU",
                ],
                [
                    [
                        conn["clients"],
                        conn["ok"],
                        conn["failed"],
                        conn["per_s"],
                        conn["p50_ms"],
                        conn["p99_ms"],
                        conn["server_cpu_util"],
                        conn["client_cpu_util"],
                    ]
                ],
            )
        )
    persist = latest("persist")
    if persist:
        parts.append(
            "### Persist summary\n\n```json\n" + json.dumps(persist["summary"], indent=1) + "\n```"
        )
        parts.append(fanout_section(persist["fanout"], "persist: Redis, one process"))
        parts.append(fanout_section(persist["two_process"], "persist: Redis, two processes"))
        nl = persist["no_listeners"]
        parts.append(
            "No listeners (closed loop):\n\n"
            + table(
                [
                    "acked/s",
                    "ack p50 ms",
                    "ack p99 ms",
                    "server CPU",
                    "server µs/ack",
                    "client CPU",
                ],
                [
                    [
                        nl["acked_per_s"],
                        nl["ack_latency"]["p50_ms"],
                        nl["ack_latency"]["p99_ms"],
                        nl["server_cpu_util"],
                        nl.get("server_cpu_us_per_msg"),
                        nl["client_cpu_util"],
                    ]
                ],
            )
        )
    prof = latest("profile")
    if prof:
        for name, p in prof["profiles"].items():
            d = p["summary"]
            parts.append(
                f"### Profile: {name} ({p['what']}; {d['samples']} samples; "
                f"{_f(d['cpu_us_per_delivery'])} µs server CPU per {p['unit']})\n\n"
                + table(
                    ["stage", "share", "µs", "inside (innermost package)"],
                    [
                        [
                            r["name"],
                            f"{r['share'] * 100:.1f}%",
                            r.get("us_per_delivery"),
                            ", ".join(
                                f"{k} {v * 100:.0f}%"
                                for k, v in d["stage_libraries"][r["name"]].items()
                            ),
                        ]
                        for r in d["stages"]
                    ],
                )
            )
    client = latest("client")
    if client:
        parts.append(
            "### Load-generator client\n\n"
            + table(
                ["client", "parse µs/frame (micro)", "client CPU µs/delivery (live)"],
                [
                    [
                        c,
                        client["microbench_us_per_frame"].get(c),
                        client["live_client_cpu_us_per_delivery"].get(c),
                    ]
                    for c in client["microbench_us_per_frame"]
                ],
            )
        )
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
