"""The runs the app lists besides its own (``workbench.catalog``): the demo's, the bench's and the studies' run folders,
read-only, and the notebooks' runs labelled as theirs; on real tiny run folders laid out as the bench lays them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import catalog as C
from workbench import jobs as J
from workbench import runs as R
from workbench import testing as T

DEMO, CPU, STUDY, KEPT = (
    "demo / ipc1_dm_haba",
    "bench cpu / ipc10_dm_haba",
    "study frontier / ipc1_haba__s0",
    "study frontier / ipc1_haba__s1",
)


@pytest.fixture
def repo(source_runs, tmp_path) -> Path:
    """A repository-like folder: the app's runs (``tiny``, ``failed``, notebook 4's ``tutorial4_haba``) in ``runs/``,
    the demo's beside them, the bench's and a study's in ``bench/results``."""
    repo = T.bench_tree(tmp_path / "repo", source_runs / "tiny")
    for name in ("tiny", "failed"):
        shutil.copytree(source_runs / name, repo / "runs" / name)
    shutil.copytree(source_runs / "tiny", repo / "runs" / "tutorial4_haba")
    return repo


def catalog(repo: Path, cache: dict | None = None) -> dict[str, R.Run]:
    return {r.name: r for r in C.all_runs(repo / "runs", repo / "bench" / "results", cache)}


def tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_lists_the_demo_bench_study_and_notebook_runs_with_their_origin(repo):
    runs = catalog(repo)
    assert set(runs) == {"tiny", "failed", "tutorial4_haba", DEMO, CPU, STUDY, KEPT}
    assert runs["tiny"].origin == R.APP and runs["tiny"].title == "tiny" and not runs["tiny"].read_only
    notebook = runs["tutorial4_haba"]
    assert notebook.title == "notebook 04 / tutorial4_haba" and not notebook.read_only
    results = repo / "bench" / "results"
    origins = {n: runs[n].origin for n in (DEMO, CPU, STUDY, KEPT)}
    assert all(o.read_only for o in origins.values())
    assert origins[DEMO].command == f"python -m bench.run --profile demo --out {repo / 'runs'}"
    assert origins[CPU].command == f"python -m bench.run --profile cpu --out {results}"
    assert (
        origins[STUDY].command == origins[KEPT].command == f"python -m bench.studies frontier --out {results}/findings"
    )
    assert origins[CPU].reason == f"made by `python -m bench.run --profile cpu --out {results}`; rerun it there"
    demo = runs[DEMO]
    assert demo.title == DEMO and demo.label.startswith(DEMO) and demo.safe_name == "demo_ipc1_dm_haba"
    assert demo.state == "finished" and demo.dataset == "toy" and list(R.snapshots(demo)) == [2, 4]
    assert len(R.read_metrics(demo)) == 4


def test_the_default_bench_folder_is_named_in_commands_as_the_repository_runs_them(monkeypatch, repo):
    monkeypatch.setattr(C, "DEFAULT_BENCH", repo / "bench" / "results")
    monkeypatch.setattr(C, "REPO_ROOT", repo)
    runs = catalog(repo)
    assert runs[CPU].origin.command == "python -m bench.run --profile cpu"
    assert runs[STUDY].origin.command == "python -m bench.studies frontier"
    assert runs[DEMO].origin.command == "python -m bench.run --profile demo --out runs"


def test_a_kept_set_without_its_run_folder_is_a_finished_run(repo):
    kept = catalog(repo)[KEPT]
    frontier = repo / "bench" / "results" / "findings" / "frontier"
    assert kept.state == "finished" and kept.step == kept.iterations == 4 and kept.dataset == "toy"
    assert R.final_synset_path(kept) == frontier / "sets" / "ipc1_haba__s1.safetensors"
    assert R.snapshots(kept) == {} and R.read_metrics(kept) == [] and R.read_evaluation(kept) is None
    assert "Only the kept set" in kept.problems[0]
    assert R.load_snapshot(R.final_synset_path(kept)).kind == "haba"
    assert C.refresh(kept) is kept
    (frontier / "cells" / "ipc1_haba__s1.json").unlink()  # a set without its record is a cell still being written
    assert KEPT not in catalog(repo)


def test_a_fresh_clone_has_nothing_but_its_own_runs(tmp_path):
    assert C.all_runs(tmp_path / "runs", tmp_path / "bench" / "results") == []
    (tmp_path / "bench" / "results" / "val_search" / "runs" / "arm" / "combo").mkdir(parents=True)  # other layouts
    (tmp_path / "runs").mkdir()
    assert C.all_runs(tmp_path / "runs", tmp_path / "bench" / "results") == []


def test_runs_folder_pointed_at_a_profiles_runs(repo):
    """``HABA_RUNS_DIR=runs/demo/runs`` lists the demo's cells."""
    runs = {r.name: r for r in C.all_runs(repo / "runs" / "demo" / "runs", repo / "nothing")}
    assert set(runs) == {DEMO} and runs[DEMO].read_only


def test_the_jobs_cannot_write_to_a_read_only_run(repo, monkeypatch):
    monkeypatch.setenv(R.RUNS_ENV, str(repo / "runs"))
    results = repo / "bench" / "results"
    before = tree(results), tree(repo / "runs" / "demo")
    for name in (DEMO, CPU, STUDY):
        with pytest.raises((J.JobError, R.RunNameError)):
            J.delete_run(name, name)
        with pytest.raises(J.JobError):
            J.resume_run(name)
        with pytest.raises(J.JobError):
            J.launch_evaluation(name, ["convnet"], 1, 1)
        assert "No evaluation" in J.cancel_evaluation(name)
    assert (tree(results), tree(repo / "runs" / "demo")) == before


def set_status(run: Path, **fields) -> None:
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, **fields}))


def test_a_bench_cell_running_in_its_own_process_is_running_and_a_dead_one_cannot_be_resumed(repo):
    run = repo / "bench" / "results" / "cpu" / "runs" / "ipc10_dm_haba" / "run"
    # the bench distills a cell in `python -m bench.run ... --cell C`, whose command line does not name haba_core
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "bench.run"])
    try:
        set_status(run, state="running", pid=proc.pid)
        assert catalog(repo)[CPU].state == "running"
    finally:
        proc.kill()
        proc.wait()
    died = catalog(repo)[CPU]
    assert died.state == R.DIED and not died.can_resume


def test_finished_runs_are_read_again_only_when_their_files_change(repo, monkeypatch):
    cache: dict = {}
    first = catalog(repo, cache)
    assert len(cache) == 4  # the demo's, the bench's, the study's run and the kept set
    read_run, reads = R.read_run, []
    monkeypatch.setattr(R, "read_run", lambda path, *a, **k: reads.append(path) or read_run(path, *a, **k))
    assert catalog(repo, cache)[CPU].state == first[CPU].state == "finished"
    assert reads and all(p.parent == repo / "runs" for p in reads)  # the app's own runs only
    set_status(repo / "bench" / "results" / "cpu" / "runs" / "ipc10_dm_haba" / "run", state="failed", error="x")
    assert catalog(repo, cache)[CPU].state == "failed"


def test_refresh_keeps_the_name_and_origin(repo):
    run = catalog(repo)[STUDY]
    again = C.refresh(run)
    assert (again.name, again.origin, again.path) == (run.name, run.origin, run.path)
    shutil.rmtree(run.path)
    assert C.refresh(run) is None
