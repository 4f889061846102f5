"""CPU memory-allocator settings that the distillation loops benefit from.

The unrolls and training loops allocate and free hundreds of large activation tensors per iteration. With
glibc's defaults each one above the mmap threshold is a fresh mapping whose pages fault in (zeroed by the
kernel) on first touch: a third of the CPU time of MTT's unroll. Two remedies, best first:

- **jemalloc, keeping freed memory** (:func:`allocator_env`): processes that distill (``haba distill``, the
  bench's cells) start under ``libjemalloc.so.2`` (``LD_PRELOAD``) with ``MALLOC_CONF`` set never to return
  freed pages to the kernel. Its size classes reuse exact blocks, so memory stays at the live peak. Measured
  side by side on one MTT+HaBa iteration at CIFAR10-IPC10 settings (``bench/results/speed_mtt.md``; fast
  unroll, float32): 24.0 s at 10.9 GB, against the reference unroll's 36.6 s at 11.4 GB and glibc's 44.1 s.
  ``make setup`` installs it (Debian's ``libjemalloc2``); ``HABA_ALLOCATOR=system`` turns it off.
- **glibc, never trimming** (:func:`reuse_freed_memory`): where jemalloc is not there. As fast, but glibc's heap
  fragments: the same iteration takes 26.8 s but holds 14.1 GB.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)
KEEP_FREED = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # jemalloc: never hand freed pages back (no re-faulting)
ALLOCATOR_ENV = "HABA_ALLOCATOR"  # "jemalloc" (default: when installed) | "system"


def jemalloc_library() -> str | None:
    """The path of an installed jemalloc (``libjemalloc.so.2``), or None."""
    return next((p for p in JEMALLOC_PATHS if Path(p).exists()), None)


def active_allocator() -> str:
    """``"jemalloc"`` when this process runs under jemalloc, else ``"system"``."""
    try:
        return "jemalloc" if "libjemalloc" in Path("/proc/self/maps").read_text() else "system"
    except OSError:
        return "system"


def allocator_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) for a child process that should run under jemalloc keeping freed
    memory: unchanged when jemalloc is not installed or ``HABA_ALLOCATOR=system``."""
    env = dict(os.environ if env is None else env)
    lib = jemalloc_library()
    if lib is None or env.get(ALLOCATOR_ENV, "jemalloc") == "system" or lib in env.get("LD_PRELOAD", ""):
        return env
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", KEEP_FREED)
    env[ALLOCATOR_ENV] = "jemalloc"
    return env


def restart_under_jemalloc(argv: list[str]) -> None:
    """Replace this process (same pid) by ``python -m haba_core *argv`` under jemalloc, once; returns without
    doing anything when that is not possible or not wanted (see :func:`allocator_env`)."""
    if active_allocator() == "jemalloc" or os.environ.get(ALLOCATOR_ENV) == "jemalloc":
        return  # already restarted (or asked for by the parent): never loop
    env = allocator_env()
    if env.get(ALLOCATOR_ENV) != "jemalloc":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "haba_core", *argv], env)


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    The unroll allocates and frees hundreds of activation tensors per iteration, many above glibc's
    mmap threshold (at most 32 MB; one ConvNet-128 activation of 100 images at 32x32 is 52 MB). Each such
    allocation is a fresh mmap whose pages fault in (and are zeroed by the kernel) on first touch:
    measured here, a third of the CPU time of an unrolled block went to page faults. Serving every
    allocation from the heap (``M_MMAP_MAX = 0``) and never trimming it (``M_TRIM_THRESHOLD`` at its maximum)
    removes that; the process keeps its peak heap until it exits (runs are their own processes).
    Process-wide and idempotent; a no-op (False) where glibc's ``mallopt`` is not available or the process runs
    under jemalloc (which then does this job).
    """
    if active_allocator() == "jemalloc":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
