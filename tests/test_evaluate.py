"""Evaluation: grouped (batched) seeds against one-at-a-time training, the cross-architecture matrix of a run
folder, and resume after a failed or killed evaluation."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haba_core import io
from haba_core.augment import DSA_DEFAULT
from haba_core.cli import main
from haba_core.data import load_dataset
from haba_core.evaluate import train_seeds
from haba_core.grouped import NotStackable, _init_nets, stack_nets
from haba_core.nets import list_nets
from haba_core.reports import matrix_csv
from haba_core.training import Recipe, train_from_scratch
from tests.conftest import tiny_config

ALL_NETS = "convnet,resnet18,vgg11,alexnet,lenet,mlp"
# 20x20 toy images: the smallest size every architecture takes (VGG11 needs its last convs at >= 2x2);
# 12x12 wherever VGG11 is not needed (a third of the arithmetic)
SIZE_ALL, SIZE_SMALL = 20, 12


def make_run(path: Path, im_size: int = SIZE_SMALL, seed: int = 0) -> Path:
    """A run folder as ``evaluate`` needs it (config.json + synset.safetensors): a HaBa set with one basis
    per class initialised from real toy images, without distilling (seconds instead of minutes)."""
    from haba_core.synsets import create_synset

    cfg = tiny_config(f'data.options={{"im_size": {im_size}, "n_test_per_class": 5}}')
    ds = load_dataset("toy", im_size=im_size, n_test_per_class=5)
    g = torch.Generator().manual_seed(seed)
    synset = create_synset("haba", ds.info, n_bases=1, n_hallucinators=2, generator=g)
    synset.init_from_real(ds, g)
    io.write_json(Path(path) / "config.json", cfg.to_dict())
    synset.save(Path(path) / "synset.safetensors")
    return Path(path)


@pytest.fixture(scope="module")
def toy12():
    return load_dataset("toy", im_size=SIZE_SMALL, n_test_per_class=5)


@pytest.fixture(scope="module")
def toy20():
    return load_dataset("toy", im_size=SIZE_ALL, n_test_per_class=5)


def _evaluate(run: Path, *args: str) -> int:
    return main(["evaluate", "--run", str(run), *args])


# ------------------------------------------------------------------------------------------------ grouped nets


@pytest.mark.parametrize("name", list_nets())
def test_stacked_network_computes_each_network(name, toy12, toy20):
    """Every registered architecture stacks; in train and eval mode the grouped network gives each seed's
    logits, and its gradients are each network's own."""
    ds = toy20 if name == "vgg11" else toy12
    info = ds.info
    nets = _init_nets(name, info, [0, 1], None)
    grouped = stack_nets(nets, probe=ds.images_test[:2])
    xs = [ds.images_test[0:2], ds.images_test[2:4]]  # each seed sees other images
    y = ds.labels_test[:4].view(2, 2)  # (seed, row)
    for m in [*nets, grouped]:
        m.train()
    ref = [n(xi) for n, xi in zip(nets, xs, strict=True)]
    out = grouped(torch.cat(xs, 1)).view(2, 2, info.num_classes)  # (row, seed, K)
    for k in range(2):
        torch.testing.assert_close(out[:, k], ref[k], rtol=1e-4, atol=1e-5)
    loss = F.cross_entropy(out.permute(0, 2, 1), y.t(), reduction="none").mean(0).sum()
    loss.backward()
    sum(F.cross_entropy(r, y[k]) for k, r in enumerate(ref)).backward()
    # first conv/linear weight: the grouped gradient is the per-network gradients, stacked seed-major
    g_grouped = next(p for p in grouped.parameters() if p.dim() >= 2).grad
    g_nets = [next(p for p in n.parameters() if p.dim() >= 2).grad for n in nets]
    expect = torch.stack(g_nets) if g_grouped.dim() == g_nets[0].dim() + 1 else torch.cat(g_nets)
    torch.testing.assert_close(g_grouped, expect, rtol=1e-3, atol=1e-4 * expect.abs().max().item())


def test_unknown_layers_are_refused_and_fall_back(monkeypatch, toy12):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 2)

    with pytest.raises(NotStackable, match="LayerNorm"):
        stack_nets([Odd(), Odd()])

    def refuse(*a, **k):
        raise NotStackable("no grouped form for Odd")

    monkeypatch.setattr("haba_core.grouped.stack_nets", refuse)
    images, labels = toy12.subset_random(1, torch.Generator().manual_seed(0))
    out = train_seeds([lambda g: (images, labels)] * 2, toy12, "mlp", Recipe(1, 0.01), [0, 1], batched=True)
    assert [r["path"] for r in out] == ["sequential", "sequential"]
    assert out[0]["fallback"] == "no grouped form for Odd"
    default = train_seeds([lambda g: (images, labels)] * 2, toy12, "mlp", Recipe(1, 0.01), [0, 1])
    assert [r["path"] for r in default] == ["sequential"] * 2 and "fallback" not in default[0]  # CPU default


def test_grouped_first_step_matches_sequential_exactly(toy12):
    """Deterministic case (no DSA, same seeds): after one SGD step the grouped networks' logits are the
    sequential networks' logits; with DSA the per-seed generators still give both paths the same batches."""
    images, labels = toy12.subset_random(2, torch.Generator().manual_seed(0))
    for dsa in ("", DSA_DEFAULT):
        recipe = Recipe(1, 0.01, dsa=dsa)
        grouped = train_seeds([lambda g: (images, labels)] * 2, toy12, "convnet", recipe, [3, 4], batched=True)
        seq = train_seeds([lambda g: (images, labels)] * 2, toy12, "convnet", recipe, [3, 4], batched=False)
        assert [r["path"] for r in grouped] == ["grouped"] * 2 and [r["path"] for r in seq] == ["sequential"] * 2
        assert [r["acc"] for r in grouped] == [r["acc"] for r in seq]
    # the losses themselves, on one identical first batch
    nets = _init_nets("convnet", toy12.info, [3, 4], {})
    stacked = stack_nets(nets)
    x = images[:8]
    seq_losses = [F.cross_entropy(n(x), labels[:8]).item() for n in nets]
    out = stacked(x.repeat(1, 2, 1, 1)).view(8, 2, -1)
    grouped_losses = [F.cross_entropy(out[:, k], labels[:8]).item() for k in range(2)]
    assert grouped_losses == pytest.approx(seq_losses, rel=1e-5)


def test_batched_and_sequential_agree_within_seed_noise(toy12):
    """Same protocol, same 4 seeds: the mean accuracies of the two paths differ by less than 3 pooled
    standard deviations (plus one test image); the paths see identical batches, so they are nearly equal."""
    images, labels = toy12.subset_random(3, torch.Generator().manual_seed(1))
    recipe, seeds = Recipe(6, 0.01, dsa=DSA_DEFAULT, standardize=True), [0, 1, 2, 3]
    src = [lambda g: (images, labels)] * 4
    grouped = [r["acc"] for r in train_seeds(src, toy12, "convnet", recipe, seeds, batched=True)]
    seq = [r["acc"] for r in train_seeds(src, toy12, "convnet", recipe, seeds, batched=False)]
    pooled = ((statistics.pvariance(grouped) + statistics.pvariance(seq)) / 2) ** 0.5
    eps = 1 / len(toy12.labels_test)
    assert abs(statistics.fmean(grouped) - statistics.fmean(seq)) <= 3 * pooled + eps
    assert statistics.fmean(seq) > 0.1  # learned something beyond chance (10 classes)


def test_sequential_reference_is_reproducible(toy12):
    images, labels = toy12.subset_random(1, torch.Generator().manual_seed(0))
    recipe = Recipe(2, 0.01, dsa=DSA_DEFAULT)
    a = train_from_scratch(lambda g: (images, labels), toy12, "lenet", recipe, seed=5)
    b = train_from_scratch(lambda g: (images, labels), toy12, "lenet", recipe, seed=5)
    assert a["acc"] == b["acc"] and a["path"] == "sequential"


# ------------------------------------------------------------------------------------------------ the matrix


def test_matrix_on_toy(tmp_path):
    """Every architecture x 2 seeds, with the random-real baseline: JSON (backwards compatible), CSV, cells."""
    run = make_run(tmp_path / "run", SIZE_ALL)
    assert _evaluate(run, "--nets", ALL_NETS, "--seeds", "2", "--epochs", "1", "--baseline", "random", "--batched") == 0
    ev = io.read_json_strict(run / "evaluation.json")
    nets = ALL_NETS.split(",")
    for source in ("synset", "random_real"):
        res = ev[source]
        assert list(res["nets"]) == nets
        for net in nets:
            r = res["nets"][net]
            assert len(r["per_seed"]) == 2 and r["n"] == 2 and 0.0 <= r["mean"] <= 1.0 and r["std"] >= 0.0
            assert r["train_s"] > 0 and r["path"] == "grouped" and r["seeds"] == [0, 1]
        assert res["protocol"]["epochs"] == 1 and res["protocol"]["test_images"] == 50
        assert "summary" in res and res["storage"]["floats_total"] > 0
        cells = sorted(p.name for p in (run / res["cells"]).glob("*_s*.json"))
        assert len(cells) == 2 * len(nets)
    assert ev["synset"]["storage"]["kind"] == "haba" and ev["random_real"]["storage"]["kind"] == "random_real"
    assert ev["random_real"]["storage"]["ipc_equivalent"] == 1.0  # floor of the HaBa set's IPC-equivalents
    assert ev["complete"] is True and ev["failed"] == [] and ev["wall_s"] > 0 and ev["batched"] is True
    assert ev["executor"]["kind"] == "local"
    csv_lines = (run / "eval" / "matrix.csv").read_text().splitlines()
    assert csv_lines[0] == "row,kind,floats_total,ipc_equivalent," + ALL_NETS
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["synset", "random_real"]
    assert " +- " in csv_lines[1]
    assert matrix_csv(ev) == (run / "eval" / "matrix.csv").read_text()
    assert len(list((run / "eval").glob("eval_*.json"))) == 1

    # the same command again recomputes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "eval" / "cells").rglob("*_s*.json")}
    assert _evaluate(run, "--nets", ALL_NETS, "--seeds", "2", "--epochs", "1", "--baseline", "random", "--batched") == 0
    again = io.read_json_strict(run / "evaluation.json")
    assert again["computed_tasks"] == 0 and again["reused_cells"] == 24
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again["synset"]["nets"]["mlp"]["per_seed"] == ev["synset"]["nets"]["mlp"]["per_seed"]


def test_failed_task_is_reported_and_resumed(tmp_path, monkeypatch, capsys):
    """A task that keeps failing is retried, then reported (exit code 4, ``failed`` in the JSON) while every
    other cell is kept; the next run computes only the missing cells."""
    run = make_run(tmp_path / "run")
    args = ["--nets", "mlp,lenet", "--seeds", "3", "--epochs", "1", "--retries", "2"]  # CPU: one task per seed
    import haba_core.evaluate as E

    real_task = E.eval_cell_task

    def fails_for_lenet_seed_1(job):  # the evaluation runs tasks in this process here (one worker)
        if job["source"]["kind"] == "synset" and job["net"] == "lenet" and job["seeds"] == [1]:
            raise RuntimeError("injected failure (test)")
        return real_task(job)

    monkeypatch.setattr(E, "eval_cell_task", fails_for_lenet_seed_1)
    assert _evaluate(run, *args) == 4
    out = capsys.readouterr()
    assert "failed (attempt 1 of 3), retrying" in out.out and "synset/lenet/s1" in out.err
    ev = io.read_json_strict(run / "evaluation.json")
    assert ev["complete"] is False
    assert [(f["task"], f["attempts"]) for f in ev["failed"]] == [("synset/lenet/s1", 3)]
    assert "injected failure" in ev["failed"][0]["error"]
    assert ev["synset"]["nets"]["lenet"]["missing_seeds"] == [1] and ev["synset"]["nets"]["lenet"]["n"] == 2
    assert ev["synset"]["nets"]["mlp"]["n"] == 3 and ev["synset"]["nets"]["mlp"]["path"] == "sequential"
    cells = run / ev["synset"]["cells"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in cells.glob("*_s*.json")}
    assert sorted(mtimes) == ["lenet_s0.json", "lenet_s2.json", "mlp_s0.json", "mlp_s1.json", "mlp_s2.json"]

    monkeypatch.setattr(E, "eval_cell_task", real_task)
    assert _evaluate(run, *args) == 0
    ev = io.read_json_strict(run / "evaluation.json")
    assert ev["complete"] is True and ev["computed_tasks"] == 1 and ev["reused_cells"] == 5
    assert ev["synset"]["nets"]["lenet"]["n"] == 3 and "missing_seeds" not in ev["synset"]["nets"]["lenet"]
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*_s*.json") if p.name in mtimes} == mtimes


def test_killed_evaluation_resumes_without_recomputing(tmp_path):
    """SIGKILL the evaluation process after its first finished cells; the rerun keeps them untouched."""
    run = make_run(tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "haba_core",
        "evaluate",
        "--run",
        str(run),
        "--nets",
        "mlp,lenet,convnet",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--no-batched",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cells_root = run / "eval" / "cells"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(cells_root.rglob("*_s*.json"))) >= 2:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in cells_root.rglob("*_s*.json")}
    assert len(before) >= 2, "the evaluation finished no cell before the deadline"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ev = io.read_json_strict(run / "evaluation.json")
    assert ev["complete"] and ev["reused_cells"] == len(before)
    assert all(ev["synset"]["nets"][n]["n"] == 2 for n in ("mlp", "lenet", "convnet"))
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_evaluate_rejects_bad_input(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert _evaluate(run, "--nets", "convnt") == 2
    assert "convnet" in capsys.readouterr().err
    assert _evaluate(run, "--nets", "mlp", "--workers", "0") == 2
    assert _evaluate(run, "--nets", "mlp", "--executor", "local", "--address", "auto", "--seeds", "1") == 2
    assert "--address is for --executor ray" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ one definition

# a value other than the default for every field of EvalSettings: a field added there must be given one here
OTHER_VALUES = {
    "epochs": 7,
    "lr": 0.05,
    "batch": 32,
    "momentum": 0.5,
    "weight_decay": 1e-3,
    "standardize": True,
    "pairing": "all",
    "split": "val",
}


def test_the_evaluation_settings_have_one_definition():
    """EvalConfig (what a run sets), EvalProtocol (what a result records), Recipe (what a trainer runs) and the
    payload a worker gets (``dataclasses.asdict(recipe)``) all take the shared settings from EvalSettings, where
    they are defined once: none declares them again, and each one set in EvalConfig reaches the protocol, its id,
    the recipe and the payload."""
    from dataclasses import asdict, fields, replace

    from haba_core.config import EvalConfig
    from haba_core.protocol import EvalProtocol, EvalSettings

    shared = [f.name for f in fields(EvalSettings)]
    assert set(OTHER_VALUES) == set(shared), "give the new field of EvalSettings another value in OTHER_VALUES"
    for cls in (EvalConfig, EvalProtocol, Recipe):
        assert issubclass(cls, EvalSettings)
        assert not set(shared) & set(vars(cls).get("__annotations__", {})), f"{cls.__name__} declares them again"
    default = EvalConfig()
    ecfg = replace(default, **OTHER_VALUES)
    protocol = EvalProtocol.from_config(ecfg, DSA_DEFAULT, 100)
    recipe = Recipe.from_protocol(protocol.record(), ecfg.test_batch, ecfg.compile)
    payload = asdict(recipe)
    for name, value in OTHER_VALUES.items():
        assert getattr(protocol, name) == protocol.record()[name] == getattr(recipe, name) == payload[name] == value
        back = EvalProtocol.from_config(replace(ecfg, **{name: getattr(default, name)}), DSA_DEFAULT, 100)
        assert back.id != protocol.id, f"{name} is not part of the protocol's id"
    assert Recipe(**payload) == recipe and recipe.dsa == DSA_DEFAULT and recipe.test_batch == 128  # standardized


def test_a_process_pool_evaluates_with_the_run_data_and_recipe_whole(tmp_path, monkeypatch):
    """Workers get the run's DataConfig and the Recipe as ``dataclasses.asdict``, rebuilt there whole: what the
    driver recorded is what they train with, in spawned processes as in this one."""
    from dataclasses import replace

    import haba_core.evaluate as E
    from haba_core.config import DataConfig, RunConfig
    from haba_core.executors import make_executor

    run = make_run(tmp_path / "run")
    cfg = RunConfig.from_dict(io.read_json_strict(run / "config.json"))
    ecfg = replace(cfg.eval, nets=("mlp",), seeds=2, epochs=1, compile=False)
    jobs = []
    real_task = E.eval_cell_task
    monkeypatch.setattr(E, "eval_cell_task", lambda job: jobs.append(job) or real_task(job))
    ev = E.evaluate_run(run, cfg, ecfg, run / "synset.safetensors", batched=False, log=None)  # here, recorded
    assert ev["complete"] and len(jobs) == 2
    root = str(Path(cfg.data.root).expanduser().resolve())
    for job in jobs:
        assert DataConfig(**job["data"]) == replace(cfg.data, root=root)  # the run's data, whole
        assert Recipe(**job["recipe"]) == Recipe.from_protocol(ev["synset"]["protocol"], ecfg.test_batch)
    monkeypatch.setattr(E, "eval_cell_task", real_task)
    pooled = tmp_path / "pooled"
    make_run(pooled)
    with make_executor("local", workers=2, threads=1) as pool:
        again = E.evaluate_run(pooled, cfg, ecfg, pooled / "synset.safetensors", executor=pool, batched=False, log=None)
    assert again["complete"] and again["executor"]["workers"] == 2
    assert again["synset"]["protocol"] == ev["synset"]["protocol"]
    assert again["synset"]["nets"]["mlp"]["seeds"] == [0, 1]
