"""Run folders as the workbench sees them: list, read status/metrics/snapshots/evaluations, check names.

A run folder is written by ``python -m haba_core distill --run-dir RUNS/NAME``; its layout, states, readers and
status writer live in ``haba_core.runfolder`` (the app writes only through ``workbench.jobs``). Every reader is a
few small file reads, tolerant of files that are missing, half-written or corrupted (the UI shows the problem
instead of raising), and loads tensors only through safetensors (``haba_core.synsets.load_synset``): nothing is
ever unpickled.

The runs folder is ``$HABA_RUNS_DIR`` or ``./runs``. Run names are checked against :data:`NAME_RE` and the
resolved path must stay directly inside the runs folder, so a name can never reach outside it. Run folders that
other tools made (the bench, its demo, the findings studies) are found by ``workbench.catalog``; each :class:`Run`
carries its :class:`Origin`.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the run folder's layout, states and tolerant readers belong to the engine's runfolder module
from haba_core import runfolder as RF
from haba_core.runfolder import ACTIVE, SNAPSHOT_RE, STATES, MetricsTail, read_json, read_jsonl, tail  # noqa: F401

RUNS_ENV = "HABA_RUNS_DIR"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DIED = "failed (process died)"
NON_LOSS_KEYS = frozenset({"step", "wall"})
SYSTEM_SUFFIXES = ("_s", "_mb", "_gb")  # time_s, peak_rss_mb, ...: speed and memory, not losses


class RunNameError(ValueError):
    """A run name that is not allowed (it could escape the runs folder, or is not a plain name)."""


def runs_dir() -> Path:
    """The runs folder: ``$HABA_RUNS_DIR`` or ``./runs`` (absolute; not created here)."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid run name (letters, digits, ``-``, ``_``, ``.``; no leading dot)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RunNameError(
            f"Invalid run name {name!r}: use 1-100 letters, digits, '-', '_' or '.', not starting with '.' or "
            "a symbol, and no path separators."
        )
    return name


def run_path(name: str, root: Path | None = None) -> Path:
    """The folder of run ``name``, guaranteed to lie directly inside the runs folder."""
    root = (root or runs_dir()).resolve()
    path = (root / check_name(name)).resolve()
    if path.parent != root:
        raise RunNameError(f"Run name {name!r} resolves to {path}, outside the runs folder {root}.")
    return path


def suggest_name(parts: list[str], root: Path | None = None) -> str:
    """A fresh, valid run name from ``parts`` plus a timestamp (a counter if it exists already)."""
    base = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-.") for p in parts if str(p))
    base = (base or "run")[:80] + time.strftime("_%m%d-%H%M%S")
    base = base.lstrip("._-") or "run"
    root = root or runs_dir()
    name, k = base, 1
    while (root / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


# -- processes ----------------------------------------------------------------------------------------------
def pid_alive(pid: Any, host: str | None = None, expect: str = "haba_core") -> bool | None:
    """Whether process ``pid`` is alive and is a haba_core process; None if it cannot be told (other host).

    Exited children of this process are reaped (so zombies do not look alive); where ``/proc`` exists, a reused
    pid that now belongs to another program counts as dead.
    """
    if host and host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the OS below
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if expect and expect not in cmdline:
                return False
        except OSError:
            return False
    return True


# -- runs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """Who made a run folder. The app's own runs have no label and are the app's to resume and delete; a folder the
    bench owns is read-only here, and ``command`` (what made it) is how to rerun it."""

    label: str = ""  # "demo", "bench cpu", "study frontier", "notebook 04"; "" for a run of the app's own
    command: str = ""
    read_only: bool = False
    process: str = "haba_core"  # what the command line of the process writing it names (see pid_alive)

    @property
    def reason(self) -> str:
        """Why the app leaves the run alone, in words ('' for a writable run)."""
        return f"made by `{self.command}`; rerun it there" if self.read_only else ""


APP = Origin()


@dataclass
class Run:
    """What the runs list shows about one run folder (a snapshot of its files when it was read)."""

    name: str
    path: Path
    state: str  # one of STATES, or DIED
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    storage: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    modified: float = 0.0
    origin: Origin = APP
    synset_file: Path | None = None  # the final set when it is kept outside the folder (a study's sets/<cell>)

    @property
    def step(self) -> int:
        return int(self.status.get("step") or 0)

    @property
    def iterations(self) -> int:
        return int(self.status.get("iterations") or self.config.get("iterations") or 0)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.iterations) if self.iterations else 0.0

    @property
    def eta_s(self) -> float | None:
        eta = self.status.get("eta_s")
        return float(eta) if isinstance(eta, (int, float)) and self.state in ACTIVE else None

    @property
    def error(self) -> str | None:
        if self.state == DIED:
            return self.status.get("error") or "The process stopped without recording why; see its log."
        return self.status.get("error") if self.state == "failed" else None

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE

    @property
    def read_only(self) -> bool:
        return self.origin.read_only

    @property
    def can_resume(self) -> bool:
        return not self.read_only and self.state in ("cancelled", "failed", DIED) and (self.path / RF.CONFIG).exists()

    @property
    def dataset(self) -> str:
        return str((self.config.get("data") or {}).get("name", "?"))

    @property
    def method(self) -> str:
        return str((self.config.get("method") or {}).get("name", "?"))

    @property
    def synset_kind(self) -> str:
        return str((self.config.get("synset") or {}).get("kind", "?"))

    @property
    def title(self) -> str:
        """The name with where the run came from: 'demo / ipc1_dm_haba', 'notebook 01 / tutorial1_haba', 'mine'.
        (A read-only run's name already starts with its origin: the catalog names it so.)"""
        return f"{self.origin.label} / {self.name}" if self.origin.label and not self.read_only else self.name

    @property
    def safe_name(self) -> str:
        """The name as a file name (download names): anything but letters, digits, '.', '_' and '-' becomes '_'."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_") or "run"

    @property
    def label(self) -> str:
        return f"{self.title}  ({self.method}+{self.synset_kind}, {self.dataset})"


def effective_state(status: dict, process: str = "haba_core") -> str:
    """The state to show: the recorded one, except an active run whose process (its command line naming ``process``)
    is gone is DIED."""
    state = str(status.get("state") or "failed")
    if state in ACTIVE:
        alive = pid_alive(status.get("pid"), status.get("host"), process)
        if alive is False:
            if state == "queued" and not status.get("pid"):
                # the launcher writes the pid right after the process starts; give it a moment
                if time.time() - float(status.get("queued_at") or 0) < 10:
                    return state
            return DIED
    return state if state in STATES else "failed"


def read_run(path: Path, origin: Origin = APP, name: str | None = None) -> Run:
    """Read one run folder (never raises for bad files; problems are listed on the Run); ``name`` defaults to the
    folder's name."""
    path = Path(path)
    status, p1 = read_json(path / RF.STATUS)
    config, p2 = read_json(path / RF.CONFIG)
    storage, p3 = read_json(path / RF.STORAGE)
    problems = [p for p in (p1, p2, p3) if p]
    status = status if isinstance(status, dict) else {}
    if not status:
        problems.append("no status.json")
        state = "failed"
        status = {"state": "failed", "error": "The run folder has no readable status.json."}
    else:
        state = effective_state(status, origin.process)
    if not storage and isinstance(status.get("storage"), dict):
        storage = status["storage"]
    try:
        modified = max(f.stat().st_mtime for f in path.iterdir()) if path.is_dir() else 0.0
    except (OSError, ValueError):
        modified = 0.0
    return Run(
        name or path.name,
        path,
        state,
        status,
        config if isinstance(config, dict) else {},
        storage if isinstance(storage, dict) else {},
        problems,
        modified,
        origin,
    )


def list_runs(root: Path | None = None) -> list[Run]:
    """Every run folder in the runs folder, newest first (hidden and oddly named entries are skipped)."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if not p.is_dir() or not NAME_RE.fullmatch(p.name):
            continue
        if not ((p / RF.STATUS).exists() or (p / RF.CONFIG).exists()):
            continue
        runs.append(read_run(p))
    return newest_first(runs)


def newest_first(runs: list[Run]) -> list[Run]:
    """``runs`` sorted by when they were queued (else started, else last written), newest first."""

    def when(r: Run) -> float:
        return float(r.status.get("queued_at") or r.status.get("started_at") or r.modified)

    return sorted(runs, key=when, reverse=True)


def get_run(name: str, root: Path | None = None) -> Run | None:
    try:
        path = run_path(name, root)
    except RunNameError:
        return None
    return read_run(path) if path.is_dir() else None


def read_metrics(run: Run | Path) -> list[dict]:
    """Every metrics record of the run (one per logged step)."""
    path = run.path if isinstance(run, Run) else Path(run)
    return read_jsonl(path / RF.METRICS)


def poll_interval(run: Run, base: float = 3.0, longest: float = 30.0) -> float | None:
    """How often a page should look at ``run``: None when it is not active (nothing will change), else about
    one logged step of the run (``sec_per_iter`` x ``log_every``), between ``base`` and ``longest`` seconds.
    (Polling every 2 s instead of 3 s measured 1.23x instead of 1.16x on a 0.45 s/iteration run on 2 cores,
    bench/watch_overhead.py.)"""
    if not run.is_active:
        return None
    spi = run.status.get("sec_per_iter")
    every = (run.config or {}).get("log_every") or 1
    if not isinstance(spi, (int, float)) or spi <= 0:
        return base
    return float(min(longest, max(base, spi * every)))


def metric_names(records: list[dict]) -> list[str]:
    """Every numeric field of the metrics records (but step and wall clock), in order of first appearance."""
    names: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in NON_LOSS_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.setdefault(k, None)
    return list(names)


def loss_names(records: list[dict]) -> list[str]:
    """The named losses (and learned scalars) of the metrics records, without speed and memory fields."""
    return [k for k in metric_names(records) if not k.endswith(SYSTEM_SUFFIXES)]


def system_names(records: list[dict]) -> list[str]:
    """Speed and memory fields of the metrics records (``time_s``, ``peak_rss_mb``, ...)."""
    return [k for k in metric_names(records) if k.endswith(SYSTEM_SUFFIXES)]


def snapshots(run: Run | Path) -> dict[int, Path]:
    """{step: file} of the run's snapshots (the final set is :func:`final_synset_path`)."""
    return RF.snapshots(run.path if isinstance(run, Run) else Path(run))


def final_synset_path(run: Run | Path) -> Path | None:
    kept = run.synset_file if isinstance(run, Run) else None
    path = kept or RF.synset_path(run.path if isinstance(run, Run) else Path(run))
    return path if path.exists() else None


def load_snapshot(path: Path, device: str = "cpu"):
    """Rebuild a synset from a snapshot file (safetensors + JSON metadata only; never unpickles).

    Raises ``haba_core.errors.CheckpointError`` with a readable message for a missing or foreign file.
    """
    from haba_core.synsets import load_synset

    return load_synset(path, device)


def read_evaluation(run: Run | Path) -> dict | None:
    """The run's latest evaluation (``evaluation.json``), or None."""
    path = run.path if isinstance(run, Run) else Path(run)
    data, _ = read_json(path / RF.EVALUATION)
    return data if isinstance(data, dict) else None


def evaluation_history(run: Run | Path) -> list[dict]:
    """Every evaluation saved under ``eval/`` (oldest first), each with its file name as ``_file``."""
    out = []
    for f in RF.evaluation_files(run.path if isinstance(run, Run) else Path(run)):
        data, _ = read_json(f)
        if isinstance(data, dict):
            out.append({**data, "_file": f.name})
    return out


def format_duration(seconds: float | None) -> str:
    """'1h 02m', '3m 05s', '12s' or '' for None."""
    if seconds is None:
        return ""
    s = int(round(max(0.0, float(seconds))))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
