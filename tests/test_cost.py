"""The cost estimate before launch (``haba_core.cost``): ``haba distill --dry-run`` and ``--estimate``, the in-process
probe, and the memory verdict against a (monkeypatched) available memory."""

from __future__ import annotations

import tempfile

import pytest

from haba_core import cost
from haba_core.cli import main
from workbench.testing import TINY, tiny_config

TINY_FLAGS = [a for t in TINY for a in ("--set", t)]


@pytest.fixture
def probe_tmp(tmp_path, monkeypatch):
    """Where the probes' temporary folders go (checked empty afterwards: each probe removes its own)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def tiny_memory(monkeypatch, mb: int = 10) -> None:
    monkeypatch.setattr(cost, "memory_available", lambda device: (mb * 2**20, f"a test allows {mb} MB"))


def test_dry_run_prints_storage_and_estimate_and_writes_nothing(tmp_path, probe_tmp, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_memory(monkeypatch)
    monkeypatch.setattr(cost, "PROBE_SECONDS", 1e9)  # a loaded machine would otherwise time fewer iterations
    run = tmp_path / "r"
    assert main(["distill", "--dry-run", "--run-dir", str(run), *TINY_FLAGS, "--set", "iterations=40"]) == 0
    out, err = capsys.readouterr()
    assert "bases per class" in out  # the storage breakdown
    for field in ("s/iteration", "total time", "(startup + 40 iterations x", "peak memory", "available memory"):
        assert field in out, field
    assert "measured on this machine: 3 probe iterations (after 2 warm-up" in out
    assert "does NOT fit" in out and "warning: A process with these settings peaked at" in err
    assert "a test allows 10 MB" in err and "The largest part is" in err
    assert not run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no run folder, no ./data
    assert not list(probe_tmp.iterdir())  # the probe's temporary folder is gone
    assert main(["distill", *TINY_FLAGS]) == 2  # a real run still needs its folder
    assert "--run-dir" in capsys.readouterr().err


def test_probe_times_iterations_and_measures_memory(monkeypatch):
    cfg = tiny_config("iterations=50", "eval_at_end=true")
    p = cost.probe(cfg, warmup=1, timed=2)
    assert len(p.step_times) == 2 and p.warmup == 1 and all(t > 0 for t in p.step_times)
    assert p.sec_per_iter > 0 and p.build_s > 0
    assert p.peak_mb >= p.step_peak_mb > 0 and p.peak_mb >= p.base_mb
    assert cost.Probe.from_dict(p.to_dict()) == p
    e = cost.judge(cfg, p)
    assert e.total_s == pytest.approx(p.start_s + p.build_s + 50 * p.sec_per_iter) and p.start_s > 0
    assert e.not_included and "evaluation at the end" in e.not_included[0]  # said, not guessed
    tiny_memory(monkeypatch)
    e = cost.judge(cfg, p)
    assert not e.fits and "a test allows 10 MB" in e.problems[0]
    # an expensive setting: the first iteration decides that one warm-up and one timed iteration are enough
    short = cost.probe(cfg, warmup=2, timed=3, max_seconds=0)
    assert (short.warmup, len(short.step_times)) == (1, 1)


def test_estimate_refuses_to_launch_a_run_over_the_available_memory(tmp_path, probe_tmp, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_memory(monkeypatch)
    run = tmp_path / "r"
    assert main(["distill", "--estimate", "--run-dir", str(run), "--quiet", *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "error: A process with these settings peaked at" in err and "Not started (--estimate)" in err
    assert not run.exists()


def test_mtt_without_experts_is_refused_clearly(tmp_path, probe_tmp, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no_experts"
    args = ["distill", "--dry-run", "--method", "mtt", "--set", f"method.expert_dir={missing}"]
    args += ["--set", "data.name=toy", "--set", "net.width=16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: Cannot estimate these settings" in err and str(missing) in err and "haba_core experts" in err
    assert not list(probe_tmp.iterdir())
