"""Where ``switchboard reload`` finds the processes serving a port: each worker (the server process
itself with one worker) holds a lock on a note named by its pid, in a directory of its own user's
named by the port, while it serves. Signalling the workers directly reloads each in place,
breakers and all; uvicorn's supervisor would instead replace them (its SIGHUP restarts every
worker). A note whose lock nobody holds is stale (its process died without removing it, and its
pid may belong to another process by now): it is removed, never signalled."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

RUN_DIR_ENV: Final = "SWITCHBOARD_RUN_DIR"


def run_dir(port: int) -> Path:
    """``$XDG_RUNTIME_DIR`` (private to the user) when there is one, else the temporary directory."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"switchboard-{os.getuid()}-{port}"


def prepare(directory: Path) -> None:
    """The directory, private to this user (another could otherwise plant notes for us to trust)."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} is not a directory private to this user")


def register(directory: Path) -> Callable[[], None]:
    """Note this process as serving, locked for as long as it lives; returns what removes it."""
    note = directory / str(os.getpid())
    draft = directory / f".{os.getpid()}"  # locked before it has the name others look for
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    draft.replace(note)

    def unregister() -> None:
        with contextlib.suppress(OSError):
            note.unlink()
        os.close(fd)

    return unregister


def serving(directory: Path) -> list[int]:
    """The pids whose notes in ``directory`` are locked by a live process (stale ones removed)."""
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return []
    return sorted(int(note.name) for note in directory.iterdir() if note.name.isdigit() and _locked(note))


def _locked(note: Path) -> bool:
    try:
        fd = os.open(note, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its process holds it: alive and serving
    else:
        with contextlib.suppress(OSError):
            note.unlink()  # stale
        return False
    finally:
        os.close(fd)


def signal_reload(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
