"""The run folder: its layout, its status schema and states, tolerant readers, and the one way to write status.

A run folder holds::

    config.json          the resolved RunConfig (written before the run starts)
    status.json          state (STATES), step, iterations, speed, pid/host, error, ...
    storage.json         what the synthetic set stores (budget plan) and the dataset's facts
    data.json            which dataset files the run read: folder, each file's path, size and sha256
    metrics.jsonl        one record per logged step (append-only; trimmed back to the checkpoint on resume)
    evals.jsonl          periodic evaluations during the run
    test_ledger.jsonl    one line per evaluation on the test split (``haba_core.ledger``; in-run and ``evaluate``)
    snapshots/step_*.safetensors, checkpoints/ckpt_*.safetensors (+ latest.json), synset.safetensors
    log.txt, eval_log.txt when launched by the app / evaluated
    evaluation.json      the latest cross-architecture evaluation (``haba evaluate``); under eval/: cells/<tag>/
                         (spec.json, one <net>_s<seed>.json per finished cell), eval_<time>.json (each), matrix.csv
    tensorboard/, wandb/ the optional logger sinks' copies of the metrics (``haba_core.loggers``; config ``loggers``)
    eval_job.json        the latest ``haba evaluate`` process: running, then finished or failed with the reason

Everything that reads or writes one goes through this module: the engine (its :class:`RunFolder` callback), the CLI, the
app (``workbench.runs``, ``workbench.jobs``), the bench and the scripts. ``status.json`` has several writers
(the launcher before and right after starting the process, the engine while it runs, a cancel); each goes
through :func:`update_status`, a read-modify-write under an exclusive lock, so no update is lost. ``eval_job.json``
likewise: the app writes it when it launches or cancels an evaluation, and the ``evaluate`` process records its own
start and end (:func:`recording_evaluation`), so the app shows the exit status, never a guess.

A front end *prepares* a run (:func:`prepare`: config.json and a ``queued`` status) and starts
``haba distill --run-dir DIR``, which runs a prepared folder from its config; ``--resume`` is only for
continuing from a checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from haba_core import io
from haba_core.callbacks import Callback
from haba_core.errors import CheckpointError, DiskError, HabaError
from haba_core.ledger import LedgerEntry
from haba_core.memory import active_allocator

CONFIG = "config.json"
STATUS = "status.json"
STORAGE = "storage.json"
DATA = "data.json"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
SYNSET = "synset.safetensors"
SNAPSHOTS = "snapshots"
CHECKPOINTS = "checkpoints"
LOG = "log.txt"
EVAL_LOG = "eval_log.txt"
EVAL_JOB = "eval_job.json"
EVALUATION = "evaluation.json"
EVAL_DIR = "eval"  # haba_core.evaluate.evaluate_run's cells, its evaluations and the matrix
MATRIX_CSV = f"{EVAL_DIR}/matrix.csv"
SPEC = "spec.json"  # in each eval/cells/<tag>/: what its cells were computed from
TEST_LEDGER = "test_ledger.jsonl"
TENSORBOARD = "tensorboard"  # TensorBoard event files (haba_core.loggers)
WANDB = "wandb"  # W&B's offline runs: wandb names the folder it makes under the directory it is given
LATEST = "latest.json"  # under checkpoints/: which checkpoint is the newest complete one
_LOCK = ".status.lock"
KEEP_CHECKPOINTS = 2  # the newest checkpoints kept (a damaged newest falls back to the one before it)

STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
SNAPSHOT_RE = re.compile(r"^step_(\d+)\.safetensors$")


def logs_step(step: int, log_every: int, iterations: int) -> bool:
    """Whether step ``step`` gets a ``metrics.jsonl`` line (every ``log_every`` steps, and the last): the logger
    sinks log the same steps."""
    return step % max(1, log_every) == 0 or step == iterations


def synset_path(run: Path) -> Path:
    """The finished run's set (``synset.safetensors``), which ``haba evaluate`` evaluates by default."""
    return Path(run) / SYNSET


def snapshot_path(run: Path, step: int) -> Path:
    return Path(run) / SNAPSHOTS / f"step_{step:07d}.safetensors"


def checkpoint_path(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"ckpt_{step:07d}.safetensors"


def snapshots(run: Path) -> dict[int, Path]:
    """Every snapshot file of the run by step, in step order ({} when there is none or the folder is unreadable)."""
    found = {}
    try:
        for p in (Path(run) / SNAPSHOTS).iterdir():
            m = SNAPSHOT_RE.fullmatch(p.name)
            if m:
                found[int(m.group(1))] = p
    except OSError:  # no snapshots folder yet, or it cannot be read
        pass
    return dict(sorted(found.items()))


def has_checkpoint(run: Path) -> bool:
    return any((Path(run) / CHECKPOINTS).glob("ckpt_*.safetensors"))


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest.json`` points at (None when there is no pointer)."""
    ptr = Path(run) / CHECKPOINTS / LATEST
    return Path(run) / CHECKPOINTS / io.read_json_strict(ptr)["file"] if ptr.exists() else None


def checkpoints(run: Path) -> list[Path]:
    """Every checkpoint file, the one ``latest.json`` points at first, then newest to oldest (the order to try
    them in when resuming)."""
    found = sorted((Path(run) / CHECKPOINTS).glob("ckpt_*.safetensors"), reverse=True)
    latest = latest_checkpoint(run)
    return [latest, *(p for p in found if p != latest)] if latest in found else found


def restore_newest(run: Path, load: Callable[[Path], None]) -> bool:
    """``load`` the newest readable checkpoint of ``run``; False when there is none.

    A damaged newest checkpoint (say, a disk filled mid-write outside our atomic path) falls back to the one before
    it, with a warning; if every checkpoint is damaged the error names them all."""
    errors = []
    for path in checkpoints(run):
        try:
            load(path)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {e}", stacklevel=2)
            continue
        return True
    if errors:
        raise CheckpointError("No readable checkpoint to resume from: " + " | ".join(errors))
    return False


def keep_checkpoint(run: Path, path: Path, step: int, keep: int) -> None:
    """Point ``latest.json`` at the checkpoint just written (``path``, of ``step``) and delete all but the newest
    ``keep`` checkpoints."""
    io.write_json(Path(run) / CHECKPOINTS / LATEST, {"file": Path(path).name, "step": step})
    for old in sorted((Path(run) / CHECKPOINTS).glob("ckpt_*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)


def failure_text(run: Path | None, e: BaseException, step: int) -> str:
    """What ``status.json`` says about a run that failed with ``e`` (being handled) at ``step``: a HabaError's own
    message, which says what to do (a full or read-only disk also how to go on from the last checkpoint); anything
    else is a bug, recorded with its traceback."""
    if not isinstance(e, HabaError):
        return "".join(traceback.format_exception_only(type(e), e)).strip() + "\n" + traceback.format_exc()
    if not isinstance(e, DiskError) or run is None:
        return str(e)
    pointer, _ = read_json(Path(run) / CHECKPOINTS / LATEST)
    if not isinstance(pointer, dict):
        return f"{e} The run stopped at step {step}, before its first checkpoint: start it again once it can write."
    return (
        f"{e} The run stopped at step {step}; its last checkpoint (step {pointer.get('step')}) is intact: once the "
        f"disk takes writes again, resume it (haba distill --run-dir {run} --resume, or Resume on the Runs page)."
    )


def ledger_entry(run: Path, config: dict, purpose: str = "eval") -> LedgerEntry:
    """The run folder's own test ledger (``test_ledger.jsonl``), for an evaluation of ``run`` under ``config``."""
    return LedgerEntry(Path(run) / TEST_LEDGER, run=str(run), purpose=purpose, config=dict(config))


def trim_to_checkpoint(run: Path, step: int | None) -> None:
    """On resume, ``metrics.jsonl`` and ``evals.jsonl`` back to the checkpoint restored at ``step``, so a resumed
    run's metrics hold each step exactly once; ``None`` (no checkpoint: the run starts over) drops every metrics
    line."""
    if step is None:
        io.truncate_jsonl(Path(run) / METRICS, lambda r: False)
        return
    io.truncate_jsonl(Path(run) / METRICS, lambda r: r.get("step", 0) <= step)
    io.truncate_jsonl(Path(run) / EVALS, lambda r: r.get("step", 0) <= step)


# -- the engine's writer: a callback of the Distiller ``d`` (haba_core.engine) ---------------------------------
class InitialSnapshot(Callback):
    """Saves the set before the first update as ``snapshots/step_0000000.safetensors`` (the app's and the
    tutorials' step 0; what a study of accuracy against iterations starts from)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)

    def on_start(self, d) -> None:
        if d.step == 0:
            d.synset.save(snapshot_path(self.path, 0), {"step": 0})


class RunFolder(Callback):
    """Keeps a run folder: config.json, status.json, metrics.jsonl, snapshots/, checkpoints/, synset.safetensors.

    Every file is written atomically; ``metrics.jsonl`` is append-only and is trimmed back to the last
    checkpoint on resume, so a resumed run's metrics hold each step exactly once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.started = time.time()

    def restore(self, d) -> bool:
        """Load the newest readable checkpoint into ``d`` (a damaged one falls back to the one before it, with a
        warning: :func:`restore_newest`); False when there is none."""
        return restore_newest(self.path, d.load_checkpoint)

    # status
    def write_status(self, d, state: str, **extra: Any) -> None:
        status = {"state": state, "pid": os.getpid(), "host": socket.gethostname()}
        if d is not None:
            spi = d.seconds_per_iteration()
            status.update(
                step=d.step,
                iterations=d.cfg.iterations,
                sec_per_iter=spi,
                eta_s=None if spi is None else spi * (d.cfg.iterations - d.step),
                storage=d.plan.to_dict(),
            )
        status.update(extra)
        update_status(self.path, **status)  # merged under the run folder's lock: no writer loses an update

    # callbacks
    def on_start(self, d) -> None:
        io.write_json(self.path / CONFIG, d.cfg.to_dict())
        io.write_json(self.path / STORAGE, {**d.plan.to_dict(), "dataset": d.dataset.info.to_dict()})
        io.write_json(self.path / DATA, d.dataset.source)  # which files, with their sha256
        self.write_status(
            d,
            "running",
            started_at=self.started,
            error=None,
            device=str(d.device),
            precision=d.method.precision,
            allocator=active_allocator(),
            notes=d.notes,
        )

    def on_step(self, d, step: int, logs: dict) -> None:
        if logs_step(step, d.cfg.log_every, d.cfg.iterations):
            io.append_jsonl(self.path / METRICS, {**logs, "wall": time.time()})
        self.write_status(d, "running")

    def on_eval(self, d, step: int, results: dict) -> None:
        io.append_jsonl(self.path / EVALS, {"step": step, **results})

    def on_snapshot(self, d, step: int) -> None:
        d.synset.save(snapshot_path(self.path, step), {"step": step})

    def on_checkpoint(self, d, step: int) -> None:
        path = checkpoint_path(self.path, step)
        d.save_checkpoint(path)
        keep_checkpoint(self.path, path, step, KEEP_CHECKPOINTS)

    def on_end(self, d, state: str, error: str | None) -> None:
        if state == "finished":
            d.synset.save(synset_path(self.path), {"step": d.step})
        self.write_status(d, state, error=error, finished_at=time.time())


# -- a run folder's evaluation in cells (haba_core.evaluate.evaluate_run) ----------------------------------------
def cells_dir(run: Path, tag: str) -> Path:
    """The folder of one evaluated source's cells; ``tag`` names the source and hashes what its cells depend on."""
    return Path(run) / EVAL_DIR / "cells" / tag


def cell_path(cells: Path, net: str, seed: int) -> Path:
    return Path(cells) / f"{net}_s{seed}.json"


def write_cell_spec(cells: Path, spec: dict) -> None:
    """``spec.json``: what every cell in ``cells`` was computed from (written by the first evaluation only)."""
    if not (Path(cells) / SPEC).exists():
        io.write_json(Path(cells) / SPEC, spec)


def write_cell(cells: Path, net: str, seed: int, record: dict) -> None:
    io.write_json(cell_path(cells, net, seed), record)


def read_cells(cells: Path, net: str, seeds: list[int]) -> list[dict]:
    """The finished cells of ``net`` among ``seeds``, in seed order (a missing one is skipped)."""
    return [io.read_json_strict(p) for s in seeds if (p := cell_path(cells, net, s)).exists()]


def evaluation_files(run: Path) -> list[Path]:
    """Every evaluation :func:`write_evaluation` kept under ``eval/`` (``eval_<start time>.json``), oldest first."""
    return sorted((Path(run) / EVAL_DIR).glob("eval_*.json"))


def write_evaluation(run: Path, evaluation: dict, matrix_csv: str) -> None:
    """``eval/eval_<start time>.json`` (each evaluation), ``evaluation.json`` (the latest), ``eval/matrix.csv``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(evaluation["started_at"]))
    io.write_json(Path(run) / EVAL_DIR / f"eval_{stamp}.json", evaluation)
    io.write_json(Path(run) / EVALUATION, evaluation)
    io.atomic_write_bytes(Path(run) / MATRIX_CSV, matrix_csv.encode())


# -- status: one locked writer ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    with io.disk_errors(Path(run) / _LOCK):
        Path(run).mkdir(parents=True, exist_ok=True)
        f = open(Path(run) / _LOCK, "a")  # opened here so that only these calls' errors name the lock file
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_status(run: Path, only_if: dict | None = None, **fields: Any) -> dict:
    """Merge ``fields`` into ``status.json`` atomically and under an exclusive lock; returns the new status.

    ``only_if``: apply only when the current status has these values (e.g. ``{"state": "queued"}``), so a
    launcher cannot overwrite what a run that already started wrote. An unreadable status is replaced."""
    return _update(run, STATUS, only_if, fields)


def update_eval_job(run: Path, only_if: dict | None = None, **fields: Any) -> dict:
    """Merge ``fields`` into ``eval_job.json`` under the run folder's lock, as :func:`update_status` does."""
    return _update(run, EVAL_JOB, only_if, fields)


def _update(run: Path, name: str, only_if: dict | None, fields: dict) -> dict:
    path = Path(run) / name
    with _locked(run):
        old, _ = read_json(path)
        old = old if isinstance(old, dict) else {}
        if only_if and any(old.get(k) != v for k, v in only_if.items()):
            return old
        new = {**old, **fields, "updated_at": time.time()}
        io.write_json(path, new)
        return new


@contextlib.contextmanager
def recording_evaluation(run: Path) -> Iterator[dict]:
    """Record this ``evaluate`` process in ``eval_job.json``: ``running`` (pid, host) on entry; on exit ``finished``,
    or ``failed`` with the reason and the exit code, from an exception or from ``outcome["exit_code"]`` /
    ``outcome["error"]`` set by the caller. A job the app cancelled meanwhile stays ``cancelled``."""
    run = Path(run)
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    update_eval_job(run, state="running", **mine, started_at=time.time(), finished_at=None, exit_code=None, error=None)
    outcome: dict[str, Any] = {"exit_code": 0, "error": None}
    try:
        yield outcome
    except BaseException as e:
        outcome["exit_code"] = 2 if isinstance(e, HabaError) else 130 if isinstance(e, KeyboardInterrupt) else 1
        outcome["error"] = (
            str(e) if isinstance(e, HabaError) else f"{type(e).__name__}: {e} (its log has the traceback)"
        )
        raise
    finally:
        ok = outcome["exit_code"] == 0
        end = {"state": "finished" if ok else "failed", "exit_code": outcome["exit_code"], "error": outcome["error"]}
        with contextlib.suppress(HabaError):  # a disk too full for this small file: the app reads the dead pid
            update_eval_job(run, only_if={"state": "running", **mine}, **end, finished_at=time.time())


def prepare(run: Path, config: dict, **status: Any) -> None:
    """A new run folder ready to start: ``config.json`` and a ``queued`` status (what the app launches). A folder
    that cannot be written (a read-only or full disk) raises :class:`~haba_core.errors.DiskError` here."""
    run = Path(run)
    io.ensure_writable_dir(run)
    io.write_json(run / CONFIG, config)
    update_status(
        run,
        state="queued",
        queued_at=time.time(),
        step=0,
        iterations=config.get("iterations"),
        pid=None,
        error=None,
        **status,
    )


def is_prepared(run: Path) -> bool:
    """A folder :func:`prepare` made and nothing has run in yet (queued, a config, no checkpoint)."""
    status, _ = read_json(Path(run) / STATUS)
    return (
        isinstance(status, dict)
        and status.get("state") == "queued"
        and (Path(run) / CONFIG).exists()
        and not has_checkpoint(run)
    )


# -- tolerant readers -------------------------------------------------------------------------------------------
def read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None) or (None, problem); a missing file is (None, None)."""
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{Path(path).name} is unreadable ({e})"


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line (a torn last line, being written, is skipped)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def tail(path: Path, max_chars: int = 4000) -> str:
    """The end of a text file (a log), or '' if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class MetricsTail:
    """Incremental reader of an append-only ``metrics.jsonl``: each :meth:`poll` reads only the bytes appended
    since the last one (a torn last line waits for its newline). A file that shrank or was replaced (another
    inode) is read again from the start. ``records`` holds every record so far; ``version`` counts changes,
    so callers redraw only when it moved."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self.version = 0
        self._offset = 0
        self._inode: int | None = None

    def poll(self) -> bool:
        """Read what was appended; True when new records arrived (or the file was reset)."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        reset = st.st_ino != self._inode or st.st_size < self._offset
        if reset:
            self.records, self._offset, self._inode = [], 0, st.st_ino
        if st.st_size == self._offset:
            if reset:
                self.version += 1
            return reset
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(st.st_size - self._offset)
        except OSError:
            return False
        end = chunk.rfind(b"\n")
        if end < 0:  # only a torn line so far
            return reset
        self._offset += end + 1
        new = 0
        for line in chunk[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                self.records.append(rec)
                new += 1
        if new or reset:
            self.version += 1
        return bool(new or reset)
