"""One writer per run directory: an exclusive OS file lock on ``<run>/.lock``.

``cen_lab.train`` (and its resume), the observer of a user's loop and the checkpoint import take the lock
before they write anything, and keep it until they end. The lock is ``flock`` on an open file, so the OS
releases it when the process dies, however it dies: a killed writer never leaves a stale lock. The file itself
stays (it holds the last holder's process id, for the error message) and is never taken for run data.

Readers (``load_run``, the figures, the explorer) never take the lock and never block. Where ``fcntl`` does
not exist (Windows), no lock is taken and a warning is logged once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import RunLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@functools.cache
def _warn_no_locking() -> None:
    log.warning("fcntl is not available on this system: run directories are not locked against a second writer")


class RunLock:
    """Exclusive lock on a run directory (created if missing); a context manager.

    Raises
    ------
    RunLockedError
        Another process holds it; the message names the run and that process.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows
            _warn_no_locking()
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _wait_for_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.path} is being written by another process ({holder}); nothing was written. Wait for it to "
                "end or stop it; reading the run (load_run, figures, the explorer) needs no lock") from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv[:4])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)  # a record in the file always names the current holder
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_record(fd: int) -> dict:
    """The holder's record, or {} when there is none yet, or only a dead process's of this host (a killed
    writer's, which the new holder is about to overwrite)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid")), 0)
        except ProcessLookupError:
            return {}
        except (OSError, TypeError, ValueError):
            pass  # alive but not ours to signal, or no pid: keep the record
    return info


def _wait_for_holder(fd: int, timeout: float = 2.0) -> str:
    """Who holds the lock: its record, waited for a moment, since the holder writes it just after it takes the
    lock (a second writer arriving in that instant would otherwise see no one)."""
    deadline = time.monotonic() + timeout
    info = _holder_record(fd)
    while not info and time.monotonic() < deadline:
        time.sleep(0.02)
        info = _holder_record(fd)
    if not info:
        return f"a process that wrote no record within {timeout:g} s"
    return f"process {info.get('pid')} on {info.get('host')}, since {info.get('since')}: {info.get('command')}"
