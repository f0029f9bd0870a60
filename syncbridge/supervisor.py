"""Several worker processes on one port (WORKERS > 1, Redis backend only).

The supervisor binds the listening socket once and starts each worker as
``python -m syncbridge serve`` with that socket inherited; the kernel spreads
new connections over the workers, and Redis makes them one service. SIGTERM or
SIGINT is passed to every worker, which drains as a single server does. A
worker that dies is restarted, unless workers keep dying (then everything
stops with exit status 1, for systemd to act on).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final

from syncbridge.server import open_listener
from syncbridge.settings import LISTEN_FD_ENV, WORKER_ID_ENV, Settings

__all__ = ["follow_supervisor", "run_workers"]

log = logging.getLogger(__name__)

_RESTARTS_PER_MINUTE: Final = 5
_KILL_AFTER_EXTRA: Final = 5.0  # seconds beyond SHUTDOWN_TIMEOUT


_PR_SET_PDEATHSIG: Final = 1


def follow_supervisor() -> None:
    """In a worker: get SIGTERM (and drain) if the supervisor dies, even by SIGKILL.

    Linux only (prctl); elsewhere a worker outlives a killed supervisor.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str], listener: socket.socket) -> None:
        self._settings = settings
        self._argv = list(argv)
        self._listener = listener
        self._listener.listen(2048)
        self._fd = self._listener.fileno()
        os.set_inheritable(self._fd, True)
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._restarts: list[float] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _start(self, number: int) -> None:
        env = dict(os.environ)
        env.update({WORKER_ID_ENV: str(number), LISTEN_FD_ENV: str(self._fd)})
        # Every worker must verify the same tokens: a generated secret is shared.
        env["JWT_SECRET"] = self._settings.jwt_secret
        process = subprocess.Popen(
            [sys.executable, "-m", "syncbridge", "serve", *self._argv],
            env=env,
            pass_fds=(self._fd,),
        )
        self._workers[number] = process
        log.info("worker %d started (pid %d)", number, process.pid)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            # Workers drain within SHUTDOWN_TIMEOUT; one that does not is killed.
            grace = self._settings.shutdown_timeout + _KILL_AFTER_EXTRA
            killer = threading.Timer(grace, self._kill_remaining)
            killer.daemon = True
            killer.start()
            log.info(
                "received %s: stopping %d workers", signal.Signals(signum).name, len(self._workers)
            )
        self._stopping = True
        for process in self._workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def _kill_remaining(self) -> None:
        for number, process in list(self._workers.items()):
            if process.poll() is None:
                log.error("worker %d did not stop in time: killing it", number)
                process.kill()

    def run(self) -> int:
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for number in range(1, self._settings.workers + 1):
                self._start(number)
            return self._wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._listener.close()

    def _wait(self) -> int:
        status = 0
        while self._workers:
            pid, code = os.wait()
            number = next((n for n, p in self._workers.items() if p.pid == pid), None)
            if number is None:
                continue
            process = self._workers.pop(number)
            process.returncode = os.waitstatus_to_exitcode(code)
            if self._stopping:
                log.info("worker %d stopped (status %d)", number, process.returncode)
                status = max(status, process.returncode)
                continue
            log.error("worker %d exited unexpectedly (status %d)", number, process.returncode)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < 60] + [now]
            if len(self._restarts) > _RESTARTS_PER_MINUTE:
                log.error("workers keep exiting; stopping them all")
                self._forward(signal.SIGTERM, None)
                status = 1
                continue
            self._start(number)
        return status


def run_workers(
    settings: Settings,
    argv: Sequence[str],
    *,
    listener: socket.socket | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT; return the exit status.

    ``listener`` is the bound public socket (default: bound here from the
    settings); ``on_ready`` gets its port before the workers start.
    """
    supervisor = _Supervisor(settings, argv, listener or open_listener(settings))
    if on_ready is not None:
        on_ready(supervisor.port)
    return supervisor.run()
