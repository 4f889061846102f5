"""bench.plateau: validation accuracy against iterations, the plateau rule, and one test per arm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import plateau

REPO = Path(__file__).resolve().parents[1]


def test_windowed_loss_averages_the_iterations_since_the_previous_step():
    metrics = [{"step": s, "loss": float(s)} for s in range(1, 11)] + [{"step": 3}]  # a record without a loss
    w = plateau.windowed_loss(metrics, [0, 4, 10])
    assert w[0] is None
    assert w[4] == (1 + 2 + 3 + 4) / 4
    assert w[10] == sum(range(5, 11)) / 6


def point(step, acc, std, loss):
    return {"step": step, "val_mean": acc, "val_std": std, "loss": loss}


def test_plateau_is_the_first_step_near_the_best_accuracy_after_which_the_loss_stays_flat():
    pts = [
        point(0, 0.50, 0.01, None),
        point(100, 0.70, 0.01, 2.0),
        point(200, 0.795, 0.01, 1.5),
        point(400, 0.80, 0.01, 1.49),
        point(800, 0.80, 0.01, 1.48),
    ]
    # step 200 is within one std of the best (0.80) and its loss (1.5) is within 2% of the final 1.48
    assert plateau.plateau_step(pts, loss_tol=0.02) == 200
    # at 1%: step 200's loss is 1.3% above the final one, step 400's 0.7%
    assert plateau.plateau_step(pts, loss_tol=0.01) == 400
    # the initial set never counts as the plateau while losses exist, even at the best accuracy
    flat = [point(0, 0.80, 0.01, None), point(100, 0.80, 0.01, 1.0), point(200, 0.80, 0.01, 1.0)]
    assert plateau.plateau_step(flat, loss_tol=0.02) == 100
    # still climbing at the end: no plateau (the last step always matches itself)
    falling = [point(100, 0.70, 0.005, 3.0), point(200, 0.75, 0.005, 2.0), point(400, 0.80, 0.005, 1.0)]
    assert plateau.plateau_step(falling, loss_tol=0.02) is None


def test_an_arm_may_run_longer_than_the_others():
    assert plateau.arm_iterations(["synset.kind=pixels", "iterations=4000"], 2000) == (["synset.kind=pixels"], 4000)
    assert plateau.arm_iterations(["synset.kind=haba"], 2000) == (["synset.kind=haba"], 2000)


def test_runs_an_arm_on_toy_data_and_reports_validation_points_and_the_test(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "bench.plateau",
        "--name",
        "toy",
        "--out",
        str(out),
        "--set",
        "data.name=toy",
        "--set",
        "net.width=8",
        "--set",
        "method.batch_real=8",
        "--set",
        "eval.epochs=1",
        "--set",
        "eval.test_batch=100",
        "--set",
        "synset.budget_ipc=1",
        "--arm",
        "pixels:synset.kind=pixels",
        "--iterations",
        "2",
        "--eval-at",
        "0,1",
        "--val-per-class",
        "5",
        "--val-seeds",
        "1",
        "--test-seeds",
        "2",
    ]
    ledger = tmp_path / "ledger.jsonl"
    env = {**os.environ, "HABA_TEST_LEDGER": str(ledger)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "toy.json").read_text())
    (row,) = res["rows"]
    assert [p["step"] for p in row["points"]] == [0, 1, 2] == res["steps"]
    assert row["points"][0]["loss"] is None and row["points"][2]["loss"] is not None
    assert all(p["protocol"]["split"] == "val" for p in row["points"])
    assert row["test_protocol"]["split"] == "test" and len(row["test"]["per_seed"]) == 2
    run = out / "runs" / "toy" / "pixels"
    assert {p.name for p in (run / "snapshots").iterdir()} == {f"step_{s:07d}.safetensors" for s in (0, 1, 2)}
    assert json.loads((run / "config.json").read_text())["data"]["val_per_class"] == 5
    assert "| pixels | val accuracy % |" in (out / "toy.md").read_text()
    assert res["command"].startswith("python -m bench.plateau --name toy --out ") and res["machine"]["cores"]
    # a second call finds the run and every evaluation cell done: same numbers, nothing retrained
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads((out / "toy.json").read_text())["rows"][0]
    assert again["points"] == row["points"] and again["test"] == row["test"]
    # only the test touched the test split, once per network (reused cells are no new test)
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert [x["cell"] for x in lines] == ["synset/convnet/s0", "synset/convnet/s1"]
    assert {(x["search"], x["run"], x["purpose"]) for x in lines} == {
        ("plateau/toy", "plateau/toy/pixels", "search final test")
    }
    # testing again (the test cells gone, as when an arm is lengthened) is refused unless told why
    specs = (run / "eval" / "cells").glob("*/spec.json")
    (tested,) = [p.parent for p in specs if json.loads(p.read_text())["protocol"]["split"] == "test"]
    for cell in tested.glob("*_s*.json"):
        cell.unlink()
    r3 = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r3.returncode != 0 and "already tested" in r3.stderr
    r4 = subprocess.run(
        [*cmd, "--retest-reason", "longer arm"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )
    assert r4.returncode == 0, r4.stderr[-3000:]
    reasons = [json.loads(x).get("retest_reason") for x in ledger.read_text().splitlines()]
    assert reasons == [None, None, "longer arm", "longer arm"]
