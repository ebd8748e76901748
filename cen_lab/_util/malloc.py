"""Keep freed memory for reuse instead of handing it back to the OS at every training step (glibc only).

glibc's ``malloc`` returns the free top of its heap to the OS once it exceeds a trim threshold that adapts to
the largest block freed so far. A CEN step frees several 8 MB activations ``[M, N, C, H, W]`` at once, the heap
is trimmed, and the next step maps the same memory again and zero-fills it page by page: about 9,000 page
faults and 25 ms of kernel time per default CEN step on 2 CPU cores (the unimodal step of the same
architecture has none). Raising the thresholds keeps that memory in the heap, which is what PyTorch's
recommended jemalloc or tcmalloc do too. ``benchmarks/README.md`` has the measurements.

``cen_lab.train`` calls ``keep_freed_memory`` once per process. It changes the process's allocator settings,
never results; set ``CEN_LAB_MALLOC_TUNING=0`` to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap (glibc's largest allowed value on 64-bit)
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the top of the heap before it is returned to the OS

@functools.cache  # decided once per process
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); return whether they are raised.

    A no-op returning False off Linux, without glibc's ``mallopt``, or with ``CEN_LAB_MALLOC_TUNING=0``.
    """
    if not sys.platform.startswith("linux") or os.environ.get("CEN_LAB_MALLOC_TUNING", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return ok
