"""Try-out mode (no JWT_SECRET): the server shares its random secret with this user's commands.

A server started without ``JWT_SECRET`` signs with a random per-process secret.
So that ``token``, ``check`` and ``client --user`` work against it without a
restart, the server writes that secret to ``tryout-<port>.json`` in a private
per-user runtime directory (``$XDG_RUNTIME_DIR/syncbridge``, else
``/tmp/syncbridge-<uid>``), and removes it on exit.

Why this is safe enough for a try-out: the directory is 0700 and the file 0600,
both checked to belong to the reader before use (a directory planted by another
user in /tmp, or a symlink, is refused), so only the same user -- who could read
the server's memory anyway -- gets the secret. The file records the server's
pid; a file left behind by a killed server is recognised as stale. Production
sets JWT_SECRET, and then no file is written. See docs/decisions/0003.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from syncbridge.errors import ConfigError

__all__ = ["read_secret", "runtime_dir", "secret_file", "shared_secret"]


def runtime_dir(*, create: bool = False) -> Path:
    """This user's private directory for try-out files (checked, optionally created)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        path = Path(base) / "syncbridge"
    else:
        path = Path(tempfile.gettempdir()) / f"syncbridge-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        _check_private(path, stat.S_ISDIR, "directory")
    return path


def secret_file(port: int) -> Path:
    """Where the try-out server on ``port`` keeps its secret."""
    return runtime_dir() / f"tryout-{port}.json"


def _check_private(path: Path, kind: Callable[[int], bool], what: str) -> None:
    info = path.lstat()  # lstat: a symlink is refused, never followed
    if not kind(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"refusing the try-out {what} {path}: it must be a {what} of yours that only "
            "you can read (mode 0700/0600); remove it, or set JWT_SECRET"
        )


@contextlib.contextmanager
def shared_secret(secret: str, port: int) -> Iterator[Path]:
    """Write the try-out secret for ``port`` (0600) while the block runs; remove it after."""
    directory = runtime_dir(create=True)
    target = directory / f"tryout-{port}.json"
    document = json.dumps({"secret": secret, "port": port, "pid": os.getpid()})
    # mkstemp creates the file 0600 with O_EXCL; the rename replaces a stale file atomically.
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".tryout-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(document)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            # Only our own file: a newer server on the same port may have replaced it.
            if json.loads(target.read_text()).get("pid") == os.getpid():
                target.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_secret(port: int) -> str:
    """The secret of the try-out server on ``port``, or ConfigError saying what to do."""
    path = secret_file(port)
    advice = "start the server without JWT_SECRET on this machine, or export its JWT_SECRET"
    try:
        _check_private(path, stat.S_ISREG, "file")
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"JWT_SECRET is not set and no try-out server on port {port} shared its secret "
            f"({path} is missing): {advice} (SERVER_ADDR selects the port)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the try-out secret {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("secret"), str):
        raise ConfigError(f"the try-out secret file {path} is damaged; remove it")
    pid = document.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        raise ConfigError(
            f"JWT_SECRET is not set and the try-out server that wrote {path} "
            f"(pid {pid}) is gone: {advice}"
        )
    secret: str = document["secret"]
    return secret
