"""Launch, cancel, resume and delete runs, and run evaluations, as separate ``python -m haba_core`` processes.

The app never trains in its own process. A launch *prepares* ``RUNS/NAME`` (``haba_core.runfolder.prepare``: the
resolved ``config.json`` and a ``queued`` status) before the process starts, then starts
``python -m haba_core distill --run-dir RUNS/NAME`` detached (its own session, output to ``RUNS/NAME/log.txt``),
which runs a prepared folder as configured; the folder holds the queued state and the log from the first moment.
Every status write (here and in the engine) is ``runfolder.update_status``, a locked read-modify-write.

Cancel sends SIGTERM to the pid in ``status.json``: the engine stops between iterations, writes a checkpoint
and marks the run ``cancelled``. Resume starts ``distill --run-dir RUNS/NAME --resume``. Evaluations run
``python -m haba_core evaluate --run RUNS/NAME ...`` in the background (``eval_job.json``, ``eval_log.txt``); the
evaluate process records its own end in ``eval_job.json`` (finished, or failed with the reason), which is what the
Evaluate page shows; a process that died without recording it (killed) is failed, whatever results exist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haba_core import runfolder as RF
from haba_core.errors import DiskError
from workbench import runs as R

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG, EVAL_JOB, EVAL_LOG = RF.LOG, RF.EVAL_JOB, RF.EVAL_LOG


class JobError(RuntimeError):
    """A job could not be started, stopped or removed; the message says why and what to do."""


def write_json(path: Path, obj: Any) -> None:
    from haba_core import io

    io.write_json(path, obj)


def _env() -> dict[str, str]:
    env = dict(os.environ)  # haba_core is installed in this interpreter's environment (`make` does it)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(args: list[str], log_path: Path, mode: str = "a") -> subprocess.Popen:
    """Start ``python -m haba_core ARGS`` detached, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, mode) as log:
        log.write(f"$ python -m haba_core {' '.join(args)}   # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "haba_core", *args],
            cwd=os.getcwd(),
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the app; SIGINT to the app does not reach it
        )


def engine_commands() -> list[str]:
    """The subcommands ``python -m haba_core`` offers (e.g. distill, evaluate, experts)."""
    from haba_core.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # argparse has no public accessor
        return sorted(action.choices)
    return []


# -- distillation runs --------------------------------------------------------------------------------------
def _start_distill(path: Path, resume: bool) -> R.Run:
    """Start ``haba distill`` on a queued run folder (a prepared one, or ``resume`` from its checkpoint).
    Every status write goes through ``runfolder.update_status`` (locked), so the engine's own writes win."""
    args = ["distill", "--run-dir", str(path), *(["--resume"] if resume else []), "--quiet"]
    try:
        proc = _spawn(args, path / RF.LOG)
    except OSError as e:
        with contextlib.suppress(DiskError):  # the disk that refused the log may refuse the status too
            RF.update_status(path, state="failed", error=f"Could not start the run: {e}")
        raise JobError(f"Could not start the run: {e}") from e
    # the pid, unless the engine already started and wrote its own
    RF.update_status(
        path, only_if={"state": "queued", "pid": None}, pid=proc.pid, command=["python", "-m", "haba_core", *args]
    )
    return R.read_run(path)


def launch_run(name: str, config: dict, root: Path | None = None) -> R.Run:
    """Create run folder ``name`` with the resolved ``config`` (a RunConfig dict) and start distilling it."""
    from haba_core.config import RunConfig

    path = R.run_path(name, root)
    if path.exists() and any(path.iterdir()):
        raise JobError(f"A run named {name!r} already exists; choose another name.")
    cfg = RunConfig.from_dict(config)  # validates keys before anything is written
    try:
        RF.prepare(path, cfg.to_dict(), host=socket.gethostname())
    except DiskError as e:  # a read-only or full disk under the runs folder
        raise JobError(f"Could not create the run folder: {e}") from e
    return _start_distill(path, resume=False)


def resume_run(name: str, root: Path | None = None) -> R.Run:
    """Continue a cancelled, failed or dead run from its last checkpoint."""
    run = R.get_run(name, root)
    if run is None:
        raise JobError(f"There is no run named {name!r}.")
    if run.is_active:
        raise JobError(f"Run {name!r} is {run.state}; it cannot be resumed while it runs.")
    if run.state == "finished":
        raise JobError(f"Run {name!r} has finished; there is nothing to resume.")
    if not (run.path / RF.CONFIG).exists():
        raise JobError(f"Run {name!r} has no config.json, so it cannot be resumed; delete it and launch again.")
    RF.update_status(run.path, state="queued", queued_at=time.time(), pid=None, host=socket.gethostname(), error=None)
    return _start_distill(run.path, resume=True)


def cancel_run(name: str, root: Path | None = None, wait_s: float = 3.0) -> str:
    """Ask a queued or running run to stop (SIGTERM); returns what happened, in words."""
    run = R.get_run(name, root)
    if run is None:
        raise JobError(f"There is no run named {name!r}.")
    if not run.is_active:
        return f"Run {name!r} is {run.state}; nothing to cancel."
    pid = run.status.get("pid")
    if R.pid_alive(pid, run.status.get("host")) is not True:
        return f"Run {name!r} has no live process to cancel."
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.time() + wait_s
    while time.time() < deadline and R.pid_alive(pid):
        time.sleep(0.1)
    if not R.pid_alive(pid):  # stopped before the engine took over: record the cancellation ourselves
        RF.update_status(run.path, only_if={"state": "queued"}, state="cancelled", finished_at=time.time())
    if R.pid_alive(pid):
        return f"Asked run {name!r} to stop; it will checkpoint and stop after the current iteration."
    return f"Run {name!r} was cancelled."


def delete_run(name: str, confirm: str, root: Path | None = None) -> None:
    """Remove run folder ``name``; ``confirm`` must repeat the name. Active runs must be cancelled first."""
    path = R.run_path(name, root)
    if confirm != name:
        raise JobError(f"Type the run's name ({name}) to confirm deleting it.")
    if not path.is_dir():
        raise JobError(f"There is no run named {name!r}.")
    run = R.read_run(path)
    if run.is_active:
        raise JobError(f"Run {name!r} is {run.state}; cancel it before deleting it.")
    ej = eval_job(path)
    if ej and ej.state == "running":
        raise JobError(f"Run {name!r} is being evaluated; cancel the evaluation before deleting it.")
    shutil.rmtree(path)


# -- evaluations ---------------------------------------------------------------------------------------------
@dataclass
class EvalJob:
    state: str  # running | finished | failed
    info: dict
    log: str

    @property
    def started_at(self) -> float:
        return float(self.info.get("started_at") or 0)


RAY_ENV = "RAY_ADDRESS"  # a Ray cluster to run evaluations and experts on (also settable in the app)


def cluster_args(address: str | None) -> list[str]:
    """The engine flags that send a job's tasks to the Ray cluster at ``address`` (none: run here)."""
    address = (address or "").strip()
    return ["--executor", "ray", "--address", address] if address else []


def evaluate_args(
    run_dir: Path,
    nets: list[str],
    seeds: int,
    epochs: int,
    baseline: bool,
    extra: list[str] = (),
    address: str | None = None,
) -> list[str]:
    args = [
        "evaluate",
        "--run",
        str(run_dir),
        "--nets",
        ",".join(nets),
        "--seeds",
        str(int(seeds)),
        "--epochs",
        str(int(epochs)),
    ]
    if baseline:
        args += ["--baseline", "random"]
    for s in extra:
        args += ["--set", s]
    return args + cluster_args(address)


def launch_evaluation(
    name: str,
    nets: list[str],
    seeds: int,
    epochs: int,
    baseline: bool = True,
    extra: list[str] = (),
    root: Path | None = None,
    address: str | None = None,
) -> EvalJob:
    """Start ``python -m haba_core evaluate`` on run ``name`` in the background (its tasks on the Ray cluster at
    ``address`` when given; progress, cancel and failed cells work the same either way)."""
    if not nets:
        raise JobError("Choose at least one architecture to evaluate on.")
    if seeds < 1 or epochs < 1:
        raise JobError("Seeds and epochs must be at least 1.")
    run = R.get_run(name, root)
    if run is None:
        raise JobError(f"There is no run named {name!r}.")
    if R.final_synset_path(run) is None and not R.snapshots(run):
        raise JobError(f"Run {name!r} has no synthetic set yet (no snapshot); wait for its first snapshot.")
    current = eval_job(run.path)
    if current and current.state == "running":
        raise JobError(f"Run {name!r} is already being evaluated.")
    args = evaluate_args(run.path, list(nets), seeds, epochs, baseline, list(extra), address)
    info = {
        "state": "running",
        "started_at": time.time(),
        "nets": list(nets),
        "seeds": int(seeds),
        "epochs": int(epochs),
        "baseline": bool(baseline),
        "executor": "ray" if cluster_args(address) else "local",
        "address": (address or "").strip() or None,
        "host": socket.gethostname(),
        "command": ["python", "-m", "haba_core", *args],
    }
    try:
        write_json(run.path / EVAL_JOB, {**info, "pid": None})  # a new job: nothing of the last one is kept
        proc = _spawn(args, run.path / EVAL_LOG, mode="w")
    except OSError as e:  # DiskError included: a full or read-only disk
        with contextlib.suppress(OSError):
            RF.update_eval_job(run.path, state="failed", error=str(e))
        raise JobError(f"Could not start the evaluation: {e}") from e
    # merged, not written over: the process may already have recorded its start, or even its end
    RF.update_eval_job(run.path, pid=proc.pid)
    return eval_job(run.path)


def eval_job(run_dir: Path) -> EvalJob | None:
    """The state of the run's latest evaluation job (None if it never had one): what the evaluate process recorded
    (finished, or failed with its reason); a ``running`` job whose process is gone without recording its end was
    killed, so it failed, even when an ``evaluation.json`` (an older one, or a partial one) exists."""
    info, problem = R.read_json(Path(run_dir) / EVAL_JOB)
    if not isinstance(info, dict):
        return None
    log = R.tail(Path(run_dir) / EVAL_LOG)
    state = info.get("state", "failed")
    if state == "running" and R.pid_alive(info.get("pid"), info.get("host")) is False:
        if info.get("pid") is None and time.time() - float(info.get("started_at") or 0) < 10:
            return EvalJob("running", info, log)  # launched a moment ago: the pid is being written
        died = "the evaluate process stopped without recording how it ended (killed, or out of memory?); see its log"
        state, info = "failed", {**info, "error": died}
    return EvalJob(state, info, log)


def cancel_evaluation(name: str, root: Path | None = None) -> str:
    run = R.get_run(name, root)
    job = eval_job(run.path) if run else None
    if job is None or job.state != "running":
        return "No evaluation is running."
    pid = job.info.get("pid")
    RF.update_eval_job(run.path, only_if={"state": "running"}, state="cancelled")  # before the process can end it
    if R.pid_alive(pid, job.info.get("host")):
        os.kill(int(pid), signal.SIGTERM)
    return f"Cancelled the evaluation of {name!r}."


# -- MTT experts ---------------------------------------------------------------------------------------------
def experts_available() -> bool:
    """Whether this engine has ``python -m haba_core experts``."""
    try:
        return "experts" in engine_commands()
    except Exception:  # an engine that fails to import has no experts command either
        return False


def has_experts(folder: Path) -> bool:
    """Whether ``folder`` holds any expert trajectories (safetensors files)."""
    folder = Path(folder)
    return folder.is_dir() and any(folder.rglob("*.safetensors"))


def launch_experts(dataset: str, out: Path, extra: list[str] = (), address: str | None = None) -> int:
    """Start ``python -m haba_core experts --dataset D --out DIR`` in the background (one task per expert on the
    Ray cluster at ``address`` when given); returns its pid."""
    if not experts_available():
        raise JobError("This engine has no `experts` command yet, so MTT experts cannot be trained from here.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = ["experts", "--dataset", dataset, "--out", str(out), *extra, *cluster_args(address)]
    proc = _spawn(args, out / "experts_log.txt")
    write_json(
        out / "experts_job.json",
        {
            "pid": proc.pid,
            "started_at": time.time(),
            "host": socket.gethostname(),
            "command": ["python", "-m", "haba_core", *args],
        },
    )
    return proc.pid


def experts_job(out: Path) -> tuple[str, str] | None:
    """(state, log tail) of the experts job writing into ``out``, or None."""
    info, _ = R.read_json(Path(out) / "experts_job.json")
    if not isinstance(info, dict):
        return None
    alive = R.pid_alive(info.get("pid"), info.get("host"))
    state = "running" if alive else ("finished" if has_experts(out) else "failed")
    return state, R.tail(Path(out) / "experts_log.txt")
