"""Observers not closed yet, flushed when the interpreter exits (so that what an open observer logged is kept,
with status ``incomplete``); the registration happens with the first observer, not at import."""

from __future__ import annotations

import atexit
import functools
import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["track_open", "untrack"]

_OPEN: "weakref.WeakSet[Any]" = weakref.WeakSet()  # observers not closed yet, flushed at interpreter exit


def _flush_open_observers() -> None:
    for obs in list(_OPEN):  # the interpreter ends with an observer open: keep what it logged (status incomplete)
        try:
            obs.flush()
        except Exception:  # never raise at exit
            log.exception("could not flush %s at exit", obs.writer.path)


@functools.cache
def _register_exit_flush() -> None:  # once per process, on the first observer (no side effect at import)
    atexit.register(_flush_open_observers)


def track_open(obs: Any) -> None:
    """Flush ``obs`` at exit if it is still open then (it is held weakly)."""
    _register_exit_flush()
    _OPEN.add(obs)


def untrack(obs: Any) -> None:
    """``obs`` is closed: nothing to flush at exit."""
    _OPEN.discard(obs)
