"""Every run folder the app shows: its own runs folder and, read-only, the run folders that the bench, its demo and
the findings studies made. Each :class:`~workbench.runs.Run` says where it came from (its ``origin``).

Only these layouts are listed, each a fixed number of folder listings deep (never a walk down the tree), so the
pages' polls stay cheap, and a folder that is not there (a fresh clone) is simply empty::

    RUNS/NAME/                                 the app's own runs; NAME tutorial<k>_... is notebook k's
    RUNS/<profile>/runs/<cell>/run/            python -m bench.run --profile P --out RUNS   (make demo: P = demo)
    RUNS/<cell>/run/                           $HABA_RUNS_DIR pointed at such a profile's runs/ folder
    BENCH/<profile>/runs/<cell>/run/           python -m bench.run --profile P
    BENCH/<group>/<profile>/runs/<cell>/run/   python -m bench.run --profile P --out BENCH/<group>
    BENCH/findings/<study>/runs/<cell>/run/    python -m bench.studies S
    <profile>/sets/<cell>.safetensors          a finished cell's kept set, with its record cells/<cell>.json: listed
                                               as a finished run when its (git-ignored) run folder is not there

RUNS is the app's runs folder (``workbench.runs.runs_dir``), BENCH is ``$HABA_BENCH_DIR`` or the repository's
``bench/results``; a profile's output folder is recognized by its ``cells/`` folder, which ``bench.run`` makes first.
Reading a finished run again is skipped when its files have not changed: callers that poll pass a ``cache`` dict
(the app keeps one, ``workbench.ui.all_runs``), which remembers each run by its folder and the modification times of
its status, config and folder (a run that is queued or running is always read again: its process may die). A
read-only run is named ``<origin> / <cell>`` ("demo / ipc1_dm_haba", "bench cpu / ipc10_dm_haba", "study frontier
/ ipc1_haba__s0"), never a valid name in the runs folder, so ``workbench.jobs`` (cancel, resume, delete, evaluate),
which acts only on names inside the runs folder, cannot write to them even if asked.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

from haba_core import runfolder as RF
from workbench import runs as R
from workbench.jobs import REPO_ROOT

BENCH_ENV = "HABA_BENCH_DIR"
DEFAULT_BENCH = REPO_ROOT / "bench" / "results"  # bench.run's default --out
FINDINGS = "findings"  # BENCH/findings/<study>: where bench.studies writes each study
BENCH_PROCESS = "bench.run"  # every bench cell distills in `python -m bench.run ... --cell C`
STUDY_PROCESS = "bench.studies"  # a study's cells in `python -m bench.studies S --cell C`
CELLS, CELL_RUNS, SETS, CELL_RUN = "cells", "runs", "sets", "run"  # bench.run's layout of a profile's output
NOTEBOOK_RE = re.compile(r"^tutorial(\d+)_")  # the notebooks' run names (workbench.tutorial, workbench.ablation)


def bench_dir() -> Path:
    """The bench's results folder: ``$HABA_BENCH_DIR`` or the repository's ``bench/results`` (absolute)."""
    return Path(os.environ.get(BENCH_ENV) or DEFAULT_BENCH).expanduser().resolve()


def all_runs(root: Path | None = None, bench: Path | None = None, cache: dict | None = None) -> list[R.Run]:
    """The app's own runs and every run the bench, its demo and the studies made, newest first; names are unique.
    ``cache``: a dict kept between calls, so that the runs the bench made are read only when their files change."""
    root = Path(root or R.runs_dir()).resolve()
    runs = [with_notebook(r) for r in R.list_runs(root)]
    names, paths = {r.name for r in runs}, set()
    for out, origin in profile_outputs(root, Path(bench or bench_dir()).resolve()):
        for run in profile_runs(out, origin, cache):
            if run.path in paths:  # the same folder reached twice (the runs and bench folders overlap)
                continue
            paths.add(run.path)
            name, k = run.name, 1
            while name in names:
                k += 1
                name = f"{run.name} ({k})"
            names.add(name)
            runs.append(dataclasses.replace(run, name=name))
    return R.newest_first(runs)


def refresh(run: R.Run) -> R.Run | None:
    """``run`` read again (a page's poll), with its name and origin; None when it is gone."""
    if run.synset_file is not None:  # a kept set: nothing of it changes
        return run if run.synset_file.exists() else None
    return R.read_run(run.path, run.origin, run.name) if run.path.is_dir() else None


def with_notebook(run: R.Run) -> R.Run:
    """A run of the runs folder labelled notebook k's when the notebooks named it (``tutorial<k>_...``, as
    ``workbench.tutorial`` and ``workbench.ablation`` do). It stays writable; its process may be a notebook kernel
    rather than ``haba_core``, so any live pid counts as its process."""
    m = NOTEBOOK_RE.match(run.name)
    return R.read_run(run.path, R.Origin(f"notebook {int(m.group(1)):02d}", process="")) if m else run


# -- where the bench's outputs are ------------------------------------------------------------------------------
def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # not there (a fresh clone) or unreadable
        return []


def is_profile_output(path: Path) -> bool:
    return (path / CELLS).is_dir()


def shown(path: Path) -> str:
    """``path`` as a command line run from the repository would take it (relative inside the repository)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def bench_origin(label: str, profile: str, out: Path) -> R.Origin:
    out_arg = "" if out == DEFAULT_BENCH else f" --out {shown(out)}"
    return R.Origin(label, f"python -m bench.run --profile {profile}{out_arg}", True, BENCH_PROCESS)


def study_origin(study: str, findings: Path) -> R.Origin:
    out_arg = "" if findings == DEFAULT_BENCH / FINDINGS else f" --out {shown(findings)}"
    return R.Origin(f"study {study}", f"python -m bench.studies {study}{out_arg}", True, STUDY_PROCESS)


def profile_outputs(root: Path, bench: Path) -> Iterator[tuple[Path, R.Origin]]:
    """(output folder of a bench profile, who made it) at every place in the module docstring's list."""
    if root.name == CELL_RUNS and is_profile_output(root.parent):  # RUNS is itself a profile's runs/ folder
        profile = root.parent.name
        yield (
            root.parent,
            bench_origin("demo" if profile == "demo" else f"bench {profile}", profile, root.parent.parent),
        )
    for d in _dirs(root):
        if is_profile_output(d):
            yield d, bench_origin("demo" if d.name == "demo" else f"{root.name}/{d.name}", d.name, root)
    for d in _dirs(bench):
        if d.name == FINDINGS:
            yield from ((s, study_origin(s.name, d)) for s in _dirs(d) if is_profile_output(s))
        elif is_profile_output(d):
            yield d, bench_origin(f"bench {d.name}", d.name, bench)
        else:  # a group of profiles: --out BENCH/<group>
            yield from (
                (p, bench_origin(f"bench {d.name}/{p.name}", p.name, d)) for p in _dirs(d) if is_profile_output(p)
            )


def _mtimes(*paths: Path) -> tuple[int, ...]:
    """Modification times (ns) of ``paths``, -1 for one that is not there."""
    out = []
    for p in paths:
        try:
            out.append(p.stat().st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)


def _read(cache: dict | None, key: tuple, stamp: tuple, read) -> R.Run | None:
    """``read()``, or what it returned for ``key`` when ``stamp`` was the same (runs that may still change: never)."""
    hit = cache.get(key) if cache is not None else None
    if hit is not None and hit[0] == stamp:
        return hit[1]
    run = read()
    if cache is not None and run is not None and not run.is_active:
        cache[key] = (stamp, run)
    return run


def profile_runs(out: Path, origin: R.Origin, cache: dict | None = None) -> Iterator[R.Run]:
    """The run folder of every distilled cell of a profile's output, then the kept sets whose run folder is gone."""
    found = set()
    for cell in _dirs(out / CELL_RUNS):
        run, name = cell / CELL_RUN, f"{origin.label} / {cell.name}"
        stamp = _mtimes(run / RF.STATUS, run / RF.CONFIG, run)
        if stamp[0] < 0 and stamp[1] < 0:  # not a run folder (a random-real cell has none)
            continue
        found.add(cell.name)
        yield _read(cache, (run, origin), stamp, lambda run=run, name=name: R.read_run(run, origin, name))
    try:
        kept = sorted((out / SETS).glob("*.safetensors"))
    except OSError:
        kept = []
    for path in kept:
        cell = path.name.removesuffix(".safetensors")
        if cell not in found:
            stamp = _mtimes(path, out / CELLS / f"{cell}.json")
            run = _read(cache, (path, origin), stamp, lambda path=path, cell=cell: kept_set(out, cell, path, origin))
            if run is not None:
                yield run


def kept_set(out: Path, cell: str, path: Path, origin: R.Origin) -> R.Run | None:
    """A finished cell known only by its kept set and record (``bench.run`` writes the set, then the record)."""
    record, _ = R.read_json(out / CELLS / f"{cell}.json")
    if not isinstance(record, dict):
        return None
    iterations = int(record.get("iterations") or 0)
    status = {"state": "finished", "step": iterations, "iterations": iterations}
    status["sec_per_iter"] = record.get("sec_per_iter")
    note = (
        f"Only the kept set ({shown(path)}) and its record are here; the run folder, with its losses and snapshots, "
        "is not on this machine."
    )
    try:
        modified = path.stat().st_mtime
    except OSError:
        return None
    config, storage = record.get("config"), record.get("storage")
    return R.Run(
        f"{origin.label} / {cell}",
        out / CELL_RUNS / cell / CELL_RUN,
        "finished",
        status,
        config if isinstance(config, dict) else {},
        storage if isinstance(storage, dict) else {},
        [note],
        modified,
        origin,
        path,
    )
