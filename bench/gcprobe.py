"""Run ``python -m syncbridge`` with a garbage-collector probe (benchmark diagnostics).

    BENCH_GC_LOG=/tmp/gc.log python bench/gcprobe.py --addr 127.0.0.1:9000

Adds one ``gc.callbacks`` hook and nothing else: every generation 1 and 2
(full) collection is appended to ``BENCH_GC_LOG`` as ``<monotonic_ns at end>
<generation> <pause µs> <collected> [<tracked objects>]``; the object count
(all generations, after the collection) only with ``BENCH_GC_COUNT=1``, which
costs a ``gc.get_objects()`` per full collection. ``BENCH_GC_TYPES=<file>`` also
writes the most common tracked types after each full collection (diagnostics).
``BENCH_GC_THRESHOLD=a,b,c`` applies ``gc.set_threshold(a, b, c)`` first
(experiments only).
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import sys
import time

_log = open(os.environ.get("BENCH_GC_LOG", os.devnull), "a", buffering=1)  # noqa: SIM115
_count = os.environ.get("BENCH_GC_COUNT") == "1"
_types = os.environ.get("BENCH_GC_TYPES")
_started: dict[int, int] = {}


def _probe(phase: str, info: dict[str, int]) -> None:
    generation = info["generation"]
    if generation < 1:
        return
    now = time.monotonic_ns()
    if phase == "start":
        _started[generation] = now
    else:
        pause_us = (now - _started.pop(generation, now)) // 1000
        extra = ""
        if generation == 2 and (_count or _types):
            objects = gc.get_objects()
            extra = f" {len(objects)}"
            if _types:
                counts = collections.Counter(type(o).__qualname__ for o in objects)
                with open(_types, "a") as out:
                    out.write(f"{now} {len(objects)} {counts.most_common(25)}\n")
            del objects
        _log.write(f"{now} {generation} {pause_us} {info['collected']}{extra}\n")


if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))
gc.callbacks.append(_probe)
sys.argv = ["syncbridge", *sys.argv[1:]]
runpy.run_module("syncbridge", run_name="__main__", alter_sys=True)
