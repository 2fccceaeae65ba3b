"""glibc malloc settings for a CPU engine: freed step buffers stay mapped for the next step.

Why: a CPU forward allocates its activations afresh every step (oneDNN's GEMMs take no output
buffer), and on a prompt step some are tens of megabytes (SmolLM2's gate/up output for 2,048
rows: 25 MB). With glibc's defaults such a buffer is returned to the kernel when freed, either
as its own ``mmap`` or by trimming the top of the heap, and the next step page-faults all of it
in again, zeroed. A round of the peers workload (``benchmarks/peers/profile_round.py``) took
216,374 minor page faults and 8.53 s of prompt steps by default, 8,967 and 8.20 s with
``M_MMAP_THRESHOLD`` at 32 MiB (glibc's largest) and trimming off. The cost: the heap keeps
its peak size (as a caching allocator would); blocks above 32 MiB are still unmapped on free.

:func:`keep_freed_memory` is called once an engine with a CPU model is built. It does nothing
on another C library, where the user set either threshold (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or the same in ``GLIBC_TUNABLES``: theirs win), or with
``PAGEDKV_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's upper limit for it on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: trim only past 2 GiB of free top
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_STATE = {"applied": False}


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MiB and stop heap trimming, once per process.
    Returns whether the settings are in force (False: not glibc, opted out, or refused)."""
    if _STATE["applied"]:
        return True
    if os.environ.get("PAGEDKV_KEEP_FREED_MEMORY", "1") == "0":
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(k in os.environ for k in _USER_SETTINGS) or "threshold" in tunables:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no libc found, or not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    ok = ok and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    _STATE["applied"] = ok
    return ok
