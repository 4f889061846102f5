"""The header every results file of the bench and its studies carries: which command made it, at which commit, on
which machine, when. One function builds it (``provenance``), so a profile's table, a study's report and a
measurement's JSON name their origin alike and readers find the same keys in all of them:

- ``command``: the command line that reproduces the file (``python -m bench.<module> ARGS``);
- ``git_commit``: the commit it ran at, ``<sha>+dirty`` when tracked files differed from it
  (``haba_core.ledger.git_commit``; results rewritten under ``bench/results/`` do not count);
- ``machine``: the CPU, its cores, torch's threads, the GPU if any, Python, torch and the platform;
- ``finished_at``: local time, ``YYYY-MM-DD HH:MM:SS``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from haba_core.ledger import git_commit


def machine() -> dict:
    """What ran it: ``cpu`` (its model name), ``cores``, ``torch_threads``, ``cuda`` (the GPU's name or None),
    ``python``, ``torch``, ``platform`` and ``bf16`` (``"native"``, or ``"emulated"`` on a CPU without it:
    ``haba_core.bf16``)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    from haba_core.bf16 import bf16_arithmetic

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "bf16": bf16_arithmetic("cuda" if torch.cuda.is_available() else "cpu"),
    }


def timestamp() -> str:
    """Now, as ``finished_at`` records it (for a file whose header is taken before a long measurement)."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def command(program: str, args: Sequence[str] | None = None) -> str:
    """``python -m <program> ARGS`` (``python <program> ARGS`` for a script's path, ``*.py``); ``args``: this
    process's (``sys.argv[1:]``) when None, each quoted as a shell would need it."""
    prog = program if program.endswith(".py") else f"-m {program}"
    args = sys.argv[1:] if args is None else list(args)
    return f"python {prog} {shlex.join(args)}".rstrip()


def provenance(program: str, args: Sequence[str] | None = None) -> dict:
    """The header of a results file: ``command`` (see :func:`command`), ``git_commit``, ``machine`` and
    ``finished_at``, in that order (spread it first into the file's dict: ``{**provenance(...), "rows": ...}``)."""
    return {
        "command": command(program, args),
        "git_commit": git_commit(),
        "machine": machine(),
        "finished_at": timestamp(),
    }


def write_report(out: Path, result: dict, md: str) -> None:
    """``<out>.json`` (every measurement, with its header) and ``<out>.md`` (the table), as the studies leave them."""
    from haba_core import io

    io.write_json(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(md)
    print(md)
