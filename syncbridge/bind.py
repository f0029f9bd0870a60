"""Binding the server's addresses before serving, so a taken port is one line, not a traceback.

The public socket is bound here, outside trio, and handed to the server (or to
the supervisor, which shares it with its workers): an ``OSError`` from a bind
inside the server's nursery would reach the operator as an exception group.
"""

from __future__ import annotations

import errno
import socket

from syncbridge.errors import ConfigError
from syncbridge.server import open_listener
from syncbridge.settings import Settings

__all__ = ["bind_listener", "probe_admin_addr"]


def _explain(exc: OSError, address: str, variable: str, port: int) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        why = (
            f"the port is already in use (`ss -tlnp | grep :{port}` shows by whom); "
            f"stop that process or set {variable} to a free port"
        )
    elif exc.errno == errno.EACCES:
        why = f"permission denied (ports below 1024 need privileges); set {variable}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"no interface of this machine has that address; set {variable}"
    else:
        why = exc.strerror or str(exc)
    return ConfigError(f"cannot listen on {address} ({variable}): {why}")


def bind_listener(settings: Settings) -> socket.socket:
    """The bound public socket, or ConfigError naming SERVER_ADDR."""
    try:
        return open_listener(settings)
    except OSError as exc:
        raise _explain(exc, settings.addr, "SERVER_ADDR", settings.port) from None
    except UnicodeError:  # an unusable host name (e.g. with an empty label)
        raise ConfigError(f"cannot listen on {settings.addr} (SERVER_ADDR): bad host") from None


def probe_admin_addr(settings: Settings, *, workers: int = 1) -> None:
    """Raise ConfigError now if ADMIN_ADDR (and, with workers, the ports after it)
    cannot be bound: hypercorn binds them later, inside the server's nursery."""
    if not settings.admin_addr:
        return
    host, _, port_text = settings.admin_addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if int(port_text) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(int(port_text), int(port_text) + workers):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # The option hypercorn sets, so a port in TIME_WAIT is no error here either.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise _explain(exc, f"{host}:{port}", "ADMIN_ADDR", port) from None
