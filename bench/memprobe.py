"""Run ``python -m syncbridge`` with tracemalloc, dumping a snapshot on SIGUSR2.

    BENCH_MEM_DIR=/tmp/snaps python bench/memprobe.py --addr 127.0.0.1:9000
    kill -USR2 <pid>   # writes /tmp/snaps/snapshot-<n>.pickle

Diagnostics only (``python bench/run.py idle --mem-probe``): tracemalloc slows
allocation down and its traces take memory, so RSS figures come from runs
without it. Compare two snapshots to see which lines hold the memory that N
idle connections added.
"""

from __future__ import annotations

import itertools
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path

_dir = Path(os.environ.get("BENCH_MEM_DIR", "."))
_numbers = itertools.count(1)


def _dump(_signum: int, _frame: object) -> None:
    path = _dir / f"snapshot-{next(_numbers)}.pickle"
    tracemalloc.take_snapshot().dump(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


tracemalloc.start(int(os.environ.get("BENCH_MEM_FRAMES", "10")))
signal.signal(signal.SIGUSR2, _dump)
sys.argv = ["syncbridge", *sys.argv[1:]]
runpy.run_module("syncbridge", run_name="__main__", alter_sys=True)
