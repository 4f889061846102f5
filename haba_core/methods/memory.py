"""CPU memory-allocator settings that the distillation loops benefit from (glibc only)."""

from __future__ import annotations


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    The unroll allocates and frees hundreds of activation tensors per iteration, many above glibc's
    mmap threshold (at most 32 MB; one ConvNet-128 activation of 100 images at 32x32 is 52 MB). Each such
    allocation is a fresh mmap whose pages fault in (and are zeroed by the kernel) on first touch:
    measured here, a third of the CPU time of an unrolled block went to page faults. Serving every
    allocation from the heap (``M_MMAP_MAX = 0``) and never trimming it (``M_TRIM_THRESHOLD`` at its maximum)
    removes that; the process keeps its peak heap until it exits (runs are their own processes).
    Process-wide and idempotent; a no-op (False) where glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
