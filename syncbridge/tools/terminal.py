"""``python -m syncbridge client``: the runbook's websocat, speaking JSON lines.

::

    echo '{"type":1,"timestamp":1707657600,"payload":{}}' | python -m syncbridge client ws://localhost:8080/ws

Each line read from stdin is sent as one text frame exactly as typed (invalid
JSON too, so operators can see how the server answers it; blank lines are
skipped). Every message received is printed on stdout as one JSON line. With a
token the client authenticates first and prints the AuthSuccess line. Like real
clients it sends a Heartbeat every 30 s; their acknowledgements are not printed.

The client exits at the end of stdin, once the replies to what it sent have
arrived (bounded by ``--drain-timeout``), or when the server closes the
connection: exit status 0 for 1000/1001, 1 for any other close code (and for a
failed connection or a refused token).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from typing import Any, Final

import attrs
import orjson
import trio

from syncbridge.auth import TokenAuthority
from syncbridge.client import (
    AuthFailed,
    Client,
    ConnectFailed,
    Disconnected,
    ServerError,
    open_client,
)
from syncbridge.errors import ConfigError
from syncbridge.protocol.messages import MessageType
from syncbridge.settings import load_settings, parse_duration
from syncbridge.tools.secret import port_of, signing_secret

__all__ = ["TerminalOptions", "add_arguments", "main", "run_terminal"]

Output = Callable[[str], None]

_NORMAL_CLOSES: Final = frozenset({1000, 1001})


@attrs.frozen(kw_only=True)
class TerminalOptions:
    """How the terminal client connects and behaves."""

    url: str
    token: str | None = None
    verbose: bool = False
    heartbeat_interval: float | None = 30.0
    drain_timeout: float = 2.0
    connect_timeout: float = 10.0


def _type_name(message: dict[str, Any]) -> str:
    value = message.get("type")
    try:
        return MessageType(value).name.title().replace("_", "") if isinstance(value, int) else "?"
    except ValueError:
        return f"type {value}"


def _one_line(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


class _Terminal:
    """One session: stdin lines out to the socket, messages in to stdout."""

    def __init__(self, client: Client, options: TerminalOptions, out: Output, err: Output) -> None:
        self.client = client
        self.options = options
        self.out = out
        self.err = err
        self.closing = False

    def note(self, line: str) -> None:
        """A diagnostic line, shown with ``-v`` only."""
        if self.options.verbose:
            self.err(line)

    async def run(self, lines: trio.abc.ReceiveChannel[str]) -> int:
        """Authenticate if asked, then relay until stdin ends or the server closes."""
        self.note(f"* connected to {self.options.url}")
        if self.options.token is not None and not await self._authenticate(self.options.token):
            return 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._print_loop, nursery.cancel_scope)
            if self.options.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat_loop, self.options.heartbeat_interval)
            await self._send_loop(lines)
            if self.client.closed is None:
                # The server may have closed the socket before or while we drained
                # (e.g. 1009 for an oversized line): that close is the one to report.
                if await self._drain():
                    with suppress(trio.TooSlowError):
                        await self.client.wait_closed(timeout=self.options.drain_timeout)
                self.closing = self.client.closed is None
                await self.client.aclose()
        return self._exit_status()

    async def _authenticate(self, token: str) -> bool:
        self.note("> Auth (token from the command line)")
        try:
            reply = await self.client.request(MessageType.AUTH, {"token": token})
        except (AuthFailed, ServerError) as exc:
            self.out(_one_line(exc.raw))
            self.err(f"syncbridge client: authentication failed: {exc.code} {exc.message}")
            return False
        except Disconnected as exc:
            self.err(f"syncbridge client: closed before authenticating: {exc.code} {exc.reason}")
            return False
        except trio.TooSlowError:
            self.err("syncbridge client: no answer to Auth")
            return False
        self.note(f"< {_type_name(reply)}")
        self.out(_one_line(reply))
        return True

    async def _send_loop(self, lines: trio.abc.ReceiveChannel[str]) -> None:
        async for line in lines:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            self.note(f"> {text}")
            try:
                await self.client.send_raw(text)
            except Disconnected:
                return
        self.note("* end of input")

    async def _drain(self) -> bool:
        """Wait for outstanding replies; True if the connection turned out closed."""
        # The server answers one socket's messages in order, so once a final
        # Heartbeat of our own is acknowledged every earlier reply has arrived.
        # Its ack echoes our correlation id and is therefore not printed.
        with trio.move_on_after(self.options.drain_timeout):
            try:
                await self.client.heartbeat(client_time="drain")
            except Disconnected:
                return True
            except (ServerError, trio.TooSlowError):
                pass
        return self.client.closed is not None

    async def _print_loop(self, done: trio.CancelScope) -> None:
        while True:
            try:
                message = await self.client.next_message()
            except Disconnected:
                break
            self.note(f"< {_type_name(message)}")
            self.out(_one_line(message))
        # The connection is closed: stop reading stdin and sending heartbeats.
        done.cancel()

    async def _heartbeat_loop(self, interval: float) -> None:
        for n in itertools.count(1):
            await trio.sleep(interval)
            self.note("> Heartbeat (keep-alive)")
            try:
                # The "hb:" correlation id makes the client drop the ack.
                await self.client.send(
                    {"type": MessageType.HEARTBEAT, "payload": {}, "correlation_id": f"hb:{n}"}
                )
            except Disconnected:
                return

    def _exit_status(self) -> int:
        closed = self.client.closed
        code = closed.code if closed is not None else None
        reason = (closed.reason if closed is not None else None) or ""
        if self.closing:
            self.note(f"* closed {code if code is not None else 1000} {reason}".rstrip())
            return 0
        self.err(f"connection closed by server: {code} {reason}".rstrip())
        return 0 if code in _NORMAL_CLOSES else 1


async def run_terminal(
    options: TerminalOptions,
    lines: trio.abc.ReceiveChannel[str],
    *,
    out: Output,
    err: Output,
) -> int:
    """Run the terminal client; ``lines`` is stdin, ``out``/``err`` print one line each.

    Returns the exit status: 0 after the end of input or a 1000/1001 close, 1 otherwise
    (including no connection and a refused token).
    """
    failure: str | None = None
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                open_client(
                    options.url,
                    heartbeat_interval=None,
                    connect_timeout=options.connect_timeout,
                )
            )
        except ConnectFailed as exc:
            failure = (
                f"{options.url} refused the WebSocket upgrade with HTTP {exc.status_code}"
                if exc.status_code is not None
                else str(exc)
            )
        except ValueError as exc:  # not a ws:// or wss:// URL
            failure = str(exc)
        if failure is None:
            return await _Terminal(client, options, out, err).run(lines)
    err(f"syncbridge client: {failure}")
    return 1


# -- the command line ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``client`` command's options."""
    parser.add_argument("url", metavar="URL", help="WebSocket URL, e.g. ws://localhost:8080/ws")
    parser.add_argument("--token", help="authenticate with this token first")
    parser.add_argument("--user", help="mint a token from JWT_SECRET: user_id claim")
    parser.add_argument("--device", help="... device_id claim")
    parser.add_argument("--session", help="... session_id claim")
    parser.add_argument("--ttl", default="15m", help="lifetime of a minted token (default 15m)")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (for JWT_SECRET)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show frame directions (> sent, < received) and the close code on stderr",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=2.0,
        help="at end of input, wait this long at most for outstanding replies (default 2)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=30.0,
        help="seconds between keep-alive Heartbeats (default 30)",
    )


def _token(args: argparse.Namespace) -> str | None:
    minting = (args.user, args.device, args.session)
    if not any(minting):
        token: str | None = args.token
        return token
    if args.token is not None:
        raise ConfigError("give either --token or --user/--device/--session, not both")
    if not all(minting):
        raise ConfigError("--user, --device and --session are needed together to mint a token")
    settings = load_settings(config_file=args.config)
    secret = signing_secret(settings, port_of(args.url))
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise ConfigError(f"--ttl: {exc}") from None
    minted, _ = TokenAuthority(secret).mint(
        user_id=args.user,
        device_id=args.device,
        session_id=args.session,
        ttl=ttl,
        now=time.time(),
    )
    return minted


async def _read_stdin(lines: trio.MemorySendChannel[str]) -> None:
    # os.read in a worker thread: portable, and unlike sys.stdin it holds no
    # lock that an abandoned thread could keep at interpreter shutdown.
    fd = sys.stdin.fileno()
    async with lines:
        pending = b""
        while chunk := await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True):
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                await lines.send(raw.decode("utf-8", "replace"))
        if pending:
            await lines.send(pending.decode("utf-8", "replace"))


def _print_out(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # Whoever read our output has gone (`| head -1`): stop writing, keep going.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _main(options: TerminalOptions) -> int:
    send, receive = trio.open_memory_channel[str](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_stdin, send)
        status = await run_terminal(options, receive, out=_print_out, err=_print_err)
        nursery.cancel_scope.cancel()
    return status


def main(args: argparse.Namespace) -> int:
    """Run the terminal client from parsed arguments; its exit status."""
    options = TerminalOptions(
        url=args.url,
        token=_token(args),
        verbose=args.verbose,
        drain_timeout=args.drain_timeout,
        heartbeat_interval=args.heartbeat_interval if args.heartbeat_interval > 0 else None,
    )
    try:
        return trio.run(_main, options)
    except KeyboardInterrupt:
        return 130
