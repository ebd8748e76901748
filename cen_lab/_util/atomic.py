"""Atomic file writes: write to a temporary name in the same directory, fsync, then rename.

A reader never sees a half-written file, and a crash leaves either the old file or the new one. A write that
fails (disk full, read-only folder, file size limit) raises ``RunWriteError`` naming the file; the temporary
file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import RunWriteError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it."""
    path = Path(path)
    # a leading dot: readers of a folder of parts (pyarrow datasets) skip hidden files
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only folder, file size limit: name the file, keep the cause
        if isinstance(e, RunWriteError):
            raise
        reason = e.strerror or str(e) or type(e).__name__
        message = f"could not write {path}: {reason}; what was written before is intact"
        raise (RunWriteError(e.errno, message) if e.errno is not None else RunWriteError(message)) from e
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:  # never hide the write error behind the clean-up's
            pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
