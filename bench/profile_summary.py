"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of the server.

    python bench/profile_summary.py bench/results/profile-<stamp>.txt [--us-per-delivery 120]

Three views of the same samples:

``stages``     each sample goes to the pipeline stage of its innermost SyncBridge
               frame (decode, store, fan-out, encode, write, ...); library frames
               below it (orjson, cattrs, hypercorn, wsproto, trio) count for that
               stage. Samples without any SyncBridge frame are hypercorn's read
               path or trio's scheduler.
``libraries``  self time by the package of the innermost frame.
``functions``  the hottest innermost functions.

With the server's CPU time per delivery, shares become microseconds per delivery.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*(?::\d+)?)\)$")

# (stage, predicate on (function, file)); checked from the innermost frame outwards,
# first match wins. Library frames match none, so they count for their caller.
_MARKERS: list[tuple[str, Any]] = [
    ("metrics (prometheus_client)", lambda f, p: p.startswith("prometheus_client/")),
    ("logging", lambda f, p: p.startswith("logging/")),
    (
        "decode (orjson + cattrs)",
        lambda f, p: p.startswith("syncbridge/protocol/codec.py") and f == "decode",
    ),
    ("encode (orjson)", lambda f, p: p.startswith("syncbridge/protocol/codec.py")),
    ("rate limit (token bucket)", lambda f, p: f.startswith("TokenBucket.")),
    (
        "store (apply/snapshot)",
        lambda f, p: p.startswith(
            ("syncbridge/store/", "syncbridge/redis/store.py", "syncbridge/protocol/session.py")
        ),
    ),
    (
        "fan-out (hub, outboxes, broker)",
        lambda f, p: p.startswith(
            ("syncbridge/hub.py", "syncbridge/broker.py", "syncbridge/redis/broker.py")
        ),
    ),
    ("presence", lambda f, p: "presence" in p and p.startswith("syncbridge/")),
    ("auth (jwt)", lambda f, p: p.startswith("syncbridge/auth.py")),
    ("redis client", lambda f, p: p.startswith("syncbridge/redis/")),
    ("service (other)", lambda f, p: p.startswith("syncbridge/service.py")),
    (
        "write loop: ASGI send -> hypercorn -> wsproto -> socket",
        lambda f, p: f == "Connection._write_loop",
    ),
    (
        "connection (read loop, watchdog, other)",
        lambda f, p: p.startswith("syncbridge/connection.py"),
    ),
    (
        "app / other syncbridge",
        lambda f, p: (
            p.startswith("syncbridge/")
            and not p.startswith(("syncbridge/__main__.py", "syncbridge/cli.py"))
        ),
    ),
]


def _package(path: str) -> str:
    if path.startswith("<"):
        return "python (frozen/stdlib)"
    head = path.split("/", 1)[0]
    if head.endswith(".py"):
        return "python stdlib"
    return head


def _parse(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack_text, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = []
        for raw in stack_text.split(";"):
            m = _FRAME.match(raw)
            if m:
                frames.append((m["func"], m["file"].rsplit(":", 1)[0]))
            else:
                frames.append((raw, ""))
        samples.append((frames, n))
    return samples


def _stage(frames: list[tuple[str, str]]) -> str:
    for func, path in reversed(frames):
        for name, predicate in _MARKERS:
            if predicate(func, path):
                return name
    files = [p for _f, p in frames]
    if any(p.startswith("hypercorn/") for p in files) or any(
        p.startswith("wsproto/") for p in files
    ):
        return "hypercorn read path (socket -> h11/wsproto -> ASGI queue)"
    if any(p.startswith("trio/") for p in files):
        return "trio scheduler + epoll"
    return "other"


def summarise(
    text: str, *, cpu_us_per_delivery: float | None = None, top: int = 20
) -> dict[str, Any]:
    samples = _parse(text)
    total = sum(n for _f, n in samples) or 1
    stages: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inside: dict[str, Counter[str]] = {}
    for frames, n in samples:
        stage = _stage(frames)
        stages[stage] += n
        if frames:
            func, path = frames[-1]
            libraries[_package(path)] += n
            functions[f"{func} ({path})"] += n
            inside.setdefault(stage, Counter())[_package(path)] += n

    def table(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        rows = []
        for name, n in counter.most_common(limit):
            row: dict[str, Any] = {"name": name, "share": round(n / total, 4)}
            if cpu_us_per_delivery:
                row["us_per_delivery"] = round(n / total * cpu_us_per_delivery, 2)
            rows.append(row)
        return rows

    return {
        "samples": total,
        "cpu_us_per_delivery": cpu_us_per_delivery,
        "stages": table(stages),
        # where each stage's time is spent, by the package of the innermost frame
        "stage_libraries": {
            stage: {k: round(v / n, 3) for k, v in inside[stage].most_common(4)}
            for stage, n in stages.most_common()
        },
        "libraries": table(libraries, 12),
        "functions": table(functions, top),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--us-per-delivery", type=float, default=None)
    args = parser.parse_args()
    summary = summarise(args.profile.read_text(), cpu_us_per_delivery=args.us_per_delivery)
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
