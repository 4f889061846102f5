"""Shared fixtures: tiny configs on the generated ``toy`` dataset (seconds on CPU)."""

from __future__ import annotations

import pytest
import torch

from workbench.testing import tiny_config  # noqa: F401  (one definition of the tiny settings, shared with the app's tests)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads_restored():
    """Every test starts with the suite's thread count (the app sets its server to one thread when AppTest runs it)
    and without the bf16 emulation a bf16 test installs in the thread on a CPU without native bf16 (under it
    ``torch.compile`` captures nothing, which a later test of compiling would notice)."""
    from haba_core import bf16

    yield
    torch.set_num_threads(THREADS)
    bf16.uninstall()


def distill_command(run, iterations: int, synset: str, *extra: str, sets: tuple[str, ...] = ()) -> list[str]:
    """``python -m haba_core distill`` on toy data as a subprocess argument list (``sets``: ``--set`` values)."""
    import sys

    args = [
        sys.executable,
        "-m",
        "haba_core",
        "distill",
        "--run-dir",
        str(run),
        "--quiet",
        "--iterations",
        str(iterations),
        "--synset",
        synset,
        *extra,
    ]
    for s in ("data.name=toy", "net.width=16", *sets):
        args += ["--set", s]
    return args


@pytest.fixture(autouse=True, scope="session")
def ledger_file(tmp_path_factory):
    """The suite's test ledger: every test-split evaluation of the session (subprocesses and notebook kernels inherit
    the variable) appends here, never to bench/results or a run folder's own ledger."""
    from haba_core.ledger import LEDGER_ENV

    path = tmp_path_factory.mktemp("ledger") / "test_ledger.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LEDGER_ENV, str(path))
        yield path


@pytest.fixture(autouse=True, scope="session")
def no_bench_runs(tmp_path_factory):
    """The app's pages list the runs of the bench, its demo and the studies (``workbench.catalog``): the suite sees none
    but what a test makes (subprocesses and app servers inherit the variable), whatever ``bench/results`` holds."""
    from workbench.catalog import BENCH_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BENCH_ENV, str(tmp_path_factory.mktemp("bench_results")))
        yield


@pytest.fixture
def toy():
    from haba_core.data import load_dataset

    return load_dataset("toy")


@pytest.fixture(scope="session")
def source_runs(tmp_path_factory):
    """A finished tiny run (with an evaluation) and a failed one, made once per session by the engine."""
    from workbench import testing as T

    return T.source_runs(tmp_path_factory.getbasetemp())


@pytest.fixture
def runs_root(source_runs, tmp_path, monkeypatch):
    """A copy of ``source_runs`` that the app's readers see (``HABA_RUNS_DIR``), fresh for each test."""
    import shutil

    from workbench import runs as R

    root = tmp_path / "runs"
    shutil.copytree(source_runs, root, ignore=shutil.ignore_patterns(".complete"))
    monkeypatch.setenv(R.RUNS_ENV, str(root))
    return root
