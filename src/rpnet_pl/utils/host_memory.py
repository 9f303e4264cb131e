"""How the process's C allocator treats freed host memory (CPU training and inference speed).

glibc's malloc serves every block above its mmap threshold (128 KiB, growing up to 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` when the tensor is freed. The kernel then zeroes
every page of the next such block on first touch. RPNet's extra scales allocate and free several GiB
of activations per training step (a 512 crop at scale 2 gives a 4 x 64 x 512 x 512 stem output of
256 MiB), so on a CPU a good part of its step went to page faults (the measured share:
docs/benchmarks.md, "Numbers behind the defaults"). PyTorch's CPU tuning guide recommends jemalloc
or tcmalloc for this reason; this module gets the effect from glibc itself.

:func:`keep_freed_memory` asks glibc, through ``mallopt``, to take every block from the heap (no
``mmap``) and never to trim the heap, so a step reuses the pages of the step before. Peak resident
memory stays what the largest step needs (plus fragmentation). :func:`release_freed_memory` hands the
free pages back (``malloc_trim``), e.g. before a peak-memory measurement. Neither does anything on a
C library other than glibc. The ``rpnet`` command calls :func:`keep_freed_memory` at start unless
``--system-malloc`` is given.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from pathlib import Path

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: the largest trim threshold mallopt takes (an int): in practice, never trim
NEVER_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or ``None`` under another C library (macOS, musl, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (see the module docstring).

    Returns whether the allocator took the settings (``False`` off glibc). Affects the whole
    process, from this call on, and processes it forks later (DataLoader workers).
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel (``malloc_trim(0)``); ``True`` if any were
    released. Off glibc it does nothing and returns ``False``."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def proc_status_kib(key: str) -> int | None:
    """A KiB field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: its peak), or
    ``None`` where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


__all__ = ["keep_freed_memory", "proc_status_kib", "release_freed_memory"]
