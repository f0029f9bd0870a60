"""The command line: ``serve`` (the default), ``token``, ``check`` and ``client``.

Every serve option is generated from :class:`syncbridge.settings.Settings`, so
``--help`` always lists each setting with its environment variable.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import trio

from syncbridge import __version__, tryout
from syncbridge.app import SyncBridgeApp
from syncbridge.auth import TokenAuthority
from syncbridge.bind import bind_listener, probe_admin_addr
from syncbridge.errors import ConfigError
from syncbridge.logs import configure_logging
from syncbridge.server import ServerInfo, serve, signal_trigger
from syncbridge.settings import (
    Settings,
    format_duration,
    is_duration,
    iter_options,
    load_settings,
    parse_duration,
    worker_role,
)
from syncbridge.supervisor import follow_supervisor, run_workers
from syncbridge.tools import check, terminal
from syncbridge.tools.secret import signing_secret

__all__ = ["main"]

log = logging.getLogger("syncbridge")

# Set by a SIGTERM that reaches a supervised worker outside serve()'s signal receiver
# (while it starts, or after it has drained): remembered rather than fatal.
_EARLY_STOP = threading.Event()

_COMMANDS = ("serve", "token", "check", "client")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "each flag overrides its environment variable, which overrides the TOML file"
    )
    for option in iter_options():
        meta = option.metadata
        default = option.default
        shown: object = ",".join(default) if isinstance(default, tuple) else default
        if is_duration(option) and isinstance(default, float):
            # As the runbook and the TOML example write it (1h, not 3600.0).
            shown = format_duration(default)
        elif isinstance(default, float):
            shown = f"{default:g}"
        env_note = f"[env {meta['env']}; default {shown!r}]"
        if not meta["flag"]:
            # Secrets are never taken from flags: they would show in `ps`.
            group.add_argument(
                f"--{option.name.replace('_', '-')}",
                dest=option.name,
                help=f"{meta['help']} [env {meta['env']} only: not settable by flag]",
                action=_RefuseSecretFlag,
                nargs=0,
            )
            continue
        flag = "--addr" if option.name == "addr" else f"--{option.name.replace('_', '-')}"
        group.add_argument(
            flag, dest=option.name, metavar="VALUE", help=f"{meta['help']} {env_note}"
        )


class _RefuseSecretFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} cannot be given as a flag; set it in the environment"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncbridge",
        description="SyncBridge real-time session-state server (HarmonyFlow v1 compatible).",
        epilog="Commands: serve (default), token, check, client. "
        "`python -m syncbridge COMMAND --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"syncbridge {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve_p = sub.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Run the SyncBridge server (the default command). Other commands: "
        "token (mint a token), check (diagnose a running server), client (a terminal "
        "WebSocket client); see `python -m syncbridge COMMAND --help`.",
    )
    serve_p.add_argument(
        "--config", metavar="FILE", help="TOML settings file [env SYNCBRIDGE_CONFIG]"
    )
    _add_setting_flags(serve_p)

    token_p = sub.add_parser(
        "token",
        help="print a token signed with JWT_SECRET",
        description="Print an HS256 token for the configured JWT_SECRET (from the environment "
        "or --config), for websocat and other hand-driven clients.",
    )
    token_p.add_argument("--user", required=True, help="user_id claim")
    token_p.add_argument("--device", required=True, help="device_id claim")
    token_p.add_argument("--session", required=True, help="session_id claim")
    token_p.add_argument("--ttl", default="15m", help="lifetime, e.g. 90s, 15m, 2h (default 15m)")
    token_p.add_argument(
        "--role", action="append", default=[], help="a role claim; repeat for several (e.g. admin)"
    )
    token_p.add_argument("--email", help="email claim")
    token_p.add_argument("--config", metavar="FILE", help="TOML settings file")

    check_p = sub.add_parser(
        "check",
        help="diagnose a running server: health, store, WebSocket round trip",
        description="Check a running server step by step (the runbook's health check): "
        "/health, the store, then two WebSocket devices authenticating with tokens minted "
        "from JWT_SECRET, a heartbeat, a snapshot and an update from one device seen by the "
        "other. One PASS/FAIL line per step, with the runbook's resolution for each failure. "
        "Exit status 0 when every step passed, 1 otherwise.",
    )
    check.add_arguments(check_p)

    client_p = sub.add_parser(
        "client",
        help="a terminal WebSocket client: JSON lines on stdin, messages on stdout",
        description="Send each stdin line as one frame (exactly as typed) and print every "
        "message received as one JSON line, like websocat. Exits at end of input (after the "
        "replies arrive) or when the server closes: 0 for close code 1000/1001, 1 otherwise.",
    )
    terminal.add_arguments(client_p)
    return parser


def _serve_settings(args: argparse.Namespace) -> Settings:
    overrides = {o.name: getattr(args, o.name, None) for o in iter_options()}
    return load_settings(overrides=overrides, config_file=args.config)


def _banner(settings: Settings, store: str, port: int) -> str:
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    ws = f"ws://{host}:{port}/ws"
    http = f"http://{host}:{port}"
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    lines = [
        f"SyncBridge {__version__} is serving (store: {store}{workers}"
        + (", state is lost when the process exits)" if store == "memory" else ")"),
        f"  WebSocket  {ws}",
        f"  Health     {http}/health",
    ]
    if settings.secret_is_ephemeral:
        lines += _tryout_lines(settings, port)
    else:
        lines.append(
            "  Token      python -m syncbridge token --user U --device D --session S  "
            "(same JWT_SECRET)"
        )
    lines.append("  Try        websocat " + ws + '  then send {"type":7,"payload":{"token":"..."}}')
    return "\n".join(lines)


def _tryout_lines(settings: Settings, port: int) -> list[str]:
    authority = TokenAuthority(settings.jwt_secret)
    now = time.time()
    token, _ = authority.mint(
        user_id="demo-user", device_id="demo-device", session_id="demo", ttl=3600, now=now
    )
    operator, _ = authority.mint(
        user_id="operator", device_id="cli", session_id="ops", roles=("admin",), ttl=3600, now=now
    )
    port_note = "" if port == 8080 else f" (with SERVER_ADDR=:{port})"
    return [
        "  Token      JWT_SECRET is not set: try-out mode, tokens die with this process.",
        "             A try-out token (user demo-user, device demo-device, session demo, 1 h):",
        f"             {token}",
        "             An operator token for /metrics, /debug and /admin (role admin, 1 h):",
        f"             {operator}",
        f"             `python -m syncbridge token|check` in your shell{port_note} use this",
        f"             server's secret, shared with you only: {tryout.secret_file(port)}",
        "             For real use: export JWT_SECRET=<32+ random bytes> and restart.",
    ]


def _tune_gc(settings: Settings) -> None:
    """Collect less often, and never again look at what start-up allocated.

    Full collections walk every tracked object (tasks, coroutines, cancel
    scopes of every connection): 110-190 ms with 1 000 connections, and they
    were the whole p99 tail of fan-out (docs/performance.md, decision 0009).
    """
    gc.collect()
    gc.freeze()
    if settings.gc_threshold:
        gc.set_threshold(settings.gc_threshold, 20, 10)


def _worker_settings(settings: Settings, number: int) -> Settings:
    """Worker N serves the operator routes on ADMIN_ADDR's port + N - 1: each worker
    has its own metrics and tasks, so each needs its own address to be scraped."""
    host, _, port = settings.admin_addr.rpartition(":")
    if not settings.admin_addr or int(port) == 0:
        return settings
    return attrs.evolve(settings, admin_addr=f"{host}:{int(port) + number - 1}")


async def _run_server(
    settings: Settings, worker: tuple[int, int] | None, listener: socket.socket | None
) -> None:
    if worker is not None:
        settings = _worker_settings(settings, worker[0])
        listener = socket.socket(fileno=worker[1])
    app = SyncBridgeApp(settings)
    async with signal_trigger() as first_signal, trio.open_nursery() as nursery:

        async def stop_requested() -> None:
            # A worker told to stop while it was still starting (before the signal
            # receiver above existed) stops as soon as it serves.
            if not _EARLY_STOP.is_set():
                await first_signal()

        info: ServerInfo = await nursery.start(
            partial(serve, app, listener=listener, shutdown_trigger=stop_requested)
        )
        _tune_gc(settings)
        if worker is None:
            port = int(info.http_url.rsplit(":", 1)[1])
            print(_banner(settings, app.backend.description, port), flush=True)
            log.info("listening on %s", ", ".join(info.binds))
        else:
            log.info("worker %d serving on the shared socket", worker[0])
    log.info("stopped")


def _serve(args: argparse.Namespace) -> int:
    settings = _serve_settings(args)
    worker = worker_role()
    supervise = settings.workers > 1 and worker is None
    if supervise and not settings.uses_redis:
        raise ConfigError(
            f"WORKERS={settings.workers} needs Redis: the memory store lives in one "
            "process; set REDIS_URL or REDIS_ADDR, or use WORKERS=1"
        )
    if worker is None:
        # Bind before anything starts, so that a taken port is one line.
        probe_admin_addr(settings, workers=settings.workers)
        listener: socket.socket | None = bind_listener(settings)
    else:
        listener = None
    configure_logging(settings.log_level, settings.log_format)
    if settings.secret_is_ephemeral:
        log.warning(
            "JWT_SECRET is not set: using a random secret for this process only; "
            "set JWT_SECRET (>= 32 bytes) for tokens that survive a restart"
        )
    elif settings.jwt_allow_weak_secret and len(settings.jwt_secret.encode()) < 32:
        log.warning("JWT_SECRET is shorter than 32 bytes; accepted because JWT_ALLOW_WEAK_SECRET=1")
    if supervise:
        assert listener is not None
        with _shared_tryout_secret(settings, listener):
            return run_workers(
                settings,
                args.argv,
                listener=listener,
                on_ready=lambda port: print(
                    _banner(settings, f"redis ({settings.redis_target})", port), flush=True
                ),
            )
    if worker is not None:
        # A worker's SIGTERM may come twice (from its supervisor and from
        # systemd or `timeout` to the whole group). While it serves, the signal
        # receiver absorbs repeats; outside that window SIGTERM is remembered, not
        # fatal: one that came while the worker was starting stops it as soon as
        # it serves (it used to be ignored, and the worker served on until the
        # supervisor's SIGKILL).
        signal.signal(signal.SIGTERM, lambda _signum, _frame: _EARLY_STOP.set())
        follow_supervisor()
    try:
        with _shared_tryout_secret(settings, listener):
            trio.run(_run_server, settings, worker, listener)
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130
    return 0


def _shared_tryout_secret(
    settings: Settings, listener: socket.socket | None
) -> contextlib.AbstractContextManager[object]:
    """In try-out mode, share the random secret with this user's commands (see tryout)."""
    if not settings.secret_is_ephemeral or listener is None:
        return contextlib.nullcontext()
    return tryout.shared_secret(settings.jwt_secret, int(listener.getsockname()[1]))


def _token(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config)
    secret = signing_secret(settings, settings.port)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise ConfigError(f"--ttl: {exc}") from None
    token, _ = TokenAuthority(secret).mint(
        user_id=args.user,
        device_id=args.device,
        session_id=args.session,
        roles=tuple(args.role),
        email=args.email,
        ttl=ttl,
        now=time.time(),
    )
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m syncbridge`` and the ``syncbridge`` script."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    # Anything that is not another command is the serve command, so that plain
    # `--help` documents every server option.
    if not args_in or args_in[0] not in (*_COMMANDS, "--version"):
        args_in.insert(0, "serve")
    args = _parser().parse_args(args_in)
    args.argv = args_in[1:]  # what a supervised worker is started with
    try:
        if args.command == "token":
            return _token(args)
        if args.command == "check":
            return check.main(args)
        if args.command == "client":
            return terminal.main(args)
        return _serve(args)
    except ConfigError as exc:
        print(f"syncbridge: {exc}", file=sys.stderr)
        return 2
