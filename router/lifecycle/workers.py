"""Where ``switchboard reload`` finds the processes serving a port: each worker (the server process
itself with one worker) leaves its pid in a directory of its own user's, named by the port, while
it serves. Signalling the workers directly reloads each in place, breakers and all; uvicorn's
supervisor would instead replace them (its SIGHUP restarts every worker)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

RUN_DIR_ENV: Final = "SWITCHBOARD_RUN_DIR"


def run_dir(port: int) -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"switchboard-{uid}-{port}"


def prepare(directory: Path) -> None:
    """The directory, private to this user (another could otherwise plant pids for us to signal)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.stat().st_uid != os.getuid() or directory.stat().st_mode & 0o077:
        raise PermissionError(f"{directory} is not private to this user")


def register(directory: Path) -> Callable[[], None]:
    """Note this process as serving; returns what removes the note."""
    note = directory / str(os.getpid())
    note.write_text("")

    def unregister() -> None:
        with contextlib.suppress(OSError):
            note.unlink()

    return unregister


def serving(directory: Path) -> list[int]:
    """The pids noted in ``directory`` that are still alive (stale notes are removed)."""
    if not directory.is_dir() or directory.stat().st_uid != os.getuid():
        return []
    pids: list[int] = []
    for note in directory.iterdir():
        if not note.name.isdigit():
            continue
        pid = int(note.name)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                note.unlink()
            continue
        except PermissionError:
            continue
        pids.append(pid)
    return sorted(pids)


def signal_reload(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
