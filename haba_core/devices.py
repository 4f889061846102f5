"""Devices and memory: which device a config's ``device`` means, the peak memory of this process, and how much
memory it may still take (cgroup limits included)."""

from __future__ import annotations

from pathlib import Path

import torch

from haba_core.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for CUDA but none is available; use device=auto or cpu.")
    return dev


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: Linux's peak RSS (``VmHWM``, via ``/proc/self/clear_refs``) and CUDA's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory since :func:`reset_peak_memory` (``peak_rss_mb``; ``peak_cuda_mb`` on CUDA)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["peak_rss_mb"] = int(line.split()[1]) / 1024
                    break
    except OSError:
        try:
            import resource

            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:  # pragma: no cover - Windows
            pass
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def resident_memory_mb() -> float | None:
    """This process's resident memory now (``VmRSS``), in MB; None where ``/proc/self/status`` cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _read_int(path: Path) -> int | None:
    """An integer file such as ``memory.max``; None when absent, unreadable or ``max`` (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < 2**60 else None  # cgroup v1 writes ~2**63 for "no limit"


def _inactive_file(stat: Path) -> int:
    """Reclaimable page cache a cgroup's usage counts (``inactive_file``): not memory a process must give up."""
    try:
        fields = dict(line.split() for line in stat.read_text().splitlines() if len(line.split()) == 2)
    except OSError:
        return 0
    return int(fields.get("inactive_file") or fields.get("total_inactive_file") or 0)


def cgroup_headroom(proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """(limit, limit - usage) in bytes of the tightest memory limit of this process's cgroups (v2 ``memory.max`` /
    ``memory.current``, v1 ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``, each folder from the process's own
    up to the root, reclaimable page cache not counted as used); None when no limit is set."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    folders: list[tuple[Path, str, str]] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, names = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        here = base / rel.lstrip("/")
        folders += [(f, *names) for f in (here, *here.parents) if f.is_relative_to(base)]
    best = None
    for folder, limit_name, usage_name in folders:
        limit = _read_int(folder / limit_name)
        if limit is None:
            continue
        used = max(0, (_read_int(folder / usage_name) or 0) - _inactive_file(folder / "memory.stat"))
        if best is None or limit - used < best[1]:
            best = (limit, limit - used)
    return best


def memory_available(device: torch.device, proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")):
    """(bytes, where that figure comes from) that this process may still allocate on ``device``: on CUDA the
    device's free memory; on the CPU the smaller of ``MemAvailable`` (``/proc/meminfo``) and the headroom of the
    process's cgroup limits (containers, systemd slices). (None, reason) when it cannot be told."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} has {free / 2**30:.1f} GB free of {total / 2**30:.1f} GB"
    avail = None
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit = cgroup_headroom(proc, root)
    if limit is not None and (avail is None or limit[1] < avail):
        return limit[1], f"this process's cgroup allows {limit[0] / 2**30:.1f} GB, {limit[1] / 2**30:.1f} GB of it free"
    if avail is None:
        return None, "the available memory could not be read (no /proc/meminfo)"
    return avail, f"this machine has {avail / 2**30:.1f} GB available (MemAvailable)"
