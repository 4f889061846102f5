"""bench.val_search: combinations scored on the validation split, presets as an axis, one test run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench import val_search

REPO = Path(__file__).resolve().parents[1]


def test_a_preset_is_a_config_file_with_its_own_overrides():
    assert val_search.presets([]) == [("", [], [])]
    assert val_search.presets(["mtt=configs/m.yaml,method.lr_img=100,method.expert_dir=e"]) == [
        ("mtt", ["configs/m.yaml"], ["method.lr_img=100", "method.expert_dir=e"])
    ]
    for bad in ("configs/m.yaml", "mtt=", "mtt=m.yaml,lr"):
        with pytest.raises(SystemExit, match="NAME=FILE"):
            val_search.presets([bad])


def test_presets_times_grid_in_order_with_the_holdout_and_the_preset_overrides_before_the_grid():
    class A:
        preset = ["dm=dm.yaml,method.lr_img=2", "dc=dc.yaml"]
        grid = ["synset.n_hallucinators=2,5"]
        config = ["base.yaml"]
        set = ["synset.kind=haba"]
        val_per_class = 50

    got = val_search.candidates(A)
    assert [val_search.tag(c) for c, _, _ in got] == [
        "preset=dm_n_hallucinators=2",
        "preset=dm_n_hallucinators=5",
        "preset=dc_n_hallucinators=2",
        "preset=dc_n_hallucinators=5",
    ]
    combo, files, overrides = got[1]
    assert combo == {"preset": "dm", "synset.n_hallucinators": "5"}
    assert files == ["base.yaml", "dm.yaml"]
    assert overrides == ["synset.kind=haba", "method.lr_img=2", "data.val_per_class=50", "synset.n_hallucinators=5"]


def test_searches_backends_on_toy_data_and_tests_only_the_chosen_one(tmp_path):
    (tmp_path / "dm.yaml").write_text("method:\n  name: dm\n")
    (tmp_path / "dc.yaml").write_text("method:\n  name: dc\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "bench.val_search",
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
        "iterations=2",
        "--set",
        "eval.epochs=1",
        "--set",
        "eval.seeds=1",
        "--set",
        "eval.test_batch=100",
        "--set",
        "synset.budget_ipc=1",
        "--set",
        "synset.kind=pixels",
        "--val-per-class",
        "5",
        "--preset",
        f"dm={tmp_path / 'dm.yaml'}",
        "--preset",
        f"dc={tmp_path / 'dc.yaml'}",
        "--test",
    ]
    ledger = tmp_path / "ledger.jsonl"
    env = {**os.environ, "HABA_TEST_LEDGER": str(ledger)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "toy.json").read_text())
    assert [row["combination"] for row in res["rows"]] == [{"preset": "dm"}, {"preset": "dc"}]
    assert all(row["split"] == "val" and row["protocol"]["split"] == "val" for row in res["rows"])
    for name in ("dm", "dc"):
        cfg = json.loads((out / "runs" / "toy" / f"preset={name}" / "config.json").read_text())
        assert cfg["method"]["name"] == name and cfg["data"]["val_per_class"] == 5
    best = max(res["rows"], key=lambda row: row["mean"])
    assert res["best"] == best["combination"] and res["test"]["protocol"]["split"] == "test"
    chosen = out / "runs" / "toy" / val_search.tag(best["combination"])
    other = next(p for p in (out / "runs" / "toy").iterdir() if p != chosen)
    assert (chosen / "search_test.json").exists() and not (other / "search_test.json").exists()
    assert "| preset=dm |" in (out / "toy.md").read_text()
    # the one provenance header: the command that reruns it, the commit, the machine, the time
    assert res["command"] == "python -m bench.val_search " + shlex.join(cmd[3:])
    assert res["git_commit"] and res["machine"]["cores"] and res["finished_at"]
    # the one test is a ledger line of the search; a second test (its cached result gone, as when another
    # combination wins a larger grid) is refused unless told why, and the reason is recorded
    (line,) = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert line["search"] == "val_search/toy" and line["purpose"] == "search final test" and line["networks"] == 1
    assert line["run"] == f"val_search/toy/{chosen.name}" and line["protocol_id"] == res["test"]["protocol"]["id"]
    (chosen / "search_test.json").unlink()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode != 0 and "already tested" in r.stderr and "--retest-reason" in r.stderr
    assert len(ledger.read_text().splitlines()) == 1
    reason = [*cmd, "--retest-reason", "a bug in the evaluation was fixed"]
    r = subprocess.run(reason, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(ledger.read_text().splitlines()[-1])
    assert last["retest_reason"] == "a bug in the evaluation was fixed" and last["search"] == "val_search/toy"
