"""The test ledger: every code path that evaluates on the test split writes one line per evaluation (the CLI and
``evaluate_run`` in this process and in worker processes, the in-memory API, the engine's in-run evaluation, the
bench, the searches, notebook 3); the validation split and expert training write none; a search's second test is
refused unless told why."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from haba_core import io
from haba_core import runfolder as RF
from haba_core.config import EvalConfig, RunConfig
from haba_core.errors import ConfigError
from haba_core.ledger import (
    LEDGER_ENV,
    LedgerEntry,
    RetestError,
    admit,
    config_hash,
    record_test_evaluation,
)
from tests.conftest import tiny_config
from tests.test_evaluate import make_run

PROTOCOL = {"split": "test", "id": "abc", "name": "plain-1ep-dsa"}


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    """A fresh ledger for one test (the environment override every path honours)."""
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(LEDGER_ENV, str(path))
    return path


def lines(path: Path) -> list[dict]:
    return io.read_jsonl_strict(path)


# ------------------------------------------------------------------------------------------------ the ledger


def test_a_line_holds_when_what_and_why_and_goes_where_the_environment_says(tmp_path, ledger):
    default = tmp_path / "default.jsonl"
    line = record_test_evaluation(default, run="r", config={"a": 1}, protocol=PROTOCOL, purpose="eval", networks=3)
    assert not default.exists() and lines(ledger) == [line]
    assert set(line) >= {"time", "commit", "dirty", "run", "config_hash", "protocol_id", "purpose", "networks"}
    assert line["protocol_id"] == "abc" and line["networks"] == 3 and line["purpose"] == "eval"
    assert line["config_hash"] == config_hash({"a": 1}) != config_hash({"a": 2})
    assert line["time"].endswith("+00:00") and len(line["commit"]) == 40 and isinstance(line["dirty"], bool)


def test_without_the_override_a_line_goes_to_the_callers_ledger(tmp_path, monkeypatch):
    monkeypatch.delenv(LEDGER_ENV)
    record_test_evaluation(tmp_path / "own.jsonl", run="r", config={}, protocol=PROTOCOL, purpose="eval", networks=1)
    assert len(lines(tmp_path / "own.jsonl")) == 1


def test_concurrent_writers_lose_no_line(ledger):
    def write(k: int) -> None:
        for i in range(40):
            record_test_evaluation(ledger, run=f"w{k}", config={}, protocol=PROTOCOL, purpose="eval", networks=i)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = lines(ledger)
    assert len(got) == 160 and len(ledger.read_text().splitlines()) == 160
    assert sorted((r["run"], r["networks"]) for r in got) == sorted((f"w{k}", i) for k in range(4) for i in range(40))


def test_the_validation_split_needs_no_entry_and_records_nothing(ledger):
    assert admit(None, "val", {}) is None
    with pytest.raises(ConfigError, match="test ledger"):
        admit(None, "test", {})
    entry = admit(LedgerEntry(ledger, "r", "eval"), "test", {"x": 1})
    assert entry.config == {"x": 1}
    assert entry.record({**PROTOCOL, "split": "val"}, 2) is None and not ledger.exists()


def test_a_search_is_refused_a_second_test_unless_told_why(ledger):
    first = LedgerEntry(ledger, "search/a", "search final test", search="val_search/s")
    first.check()  # nothing recorded yet
    first.record(PROTOCOL, 2)
    first.record(PROTOCOL, 2)  # the same invocation may test several arms (plateau)
    first.check()
    later = LedgerEntry(ledger, "search/b", "search final test", search="val_search/s", since=time.time() + 1)
    with pytest.raises(RetestError, match="already tested.*--retest-reason"):
        later.check()
    LedgerEntry(ledger, "search/b", "search final test", search="val_search/other", since=time.time() + 1).check()
    told = dataclasses.replace(later, retest_reason="the grid grew")
    told.check()
    assert told.record(PROTOCOL, 2)["retest_reason"] == "the grid grew"
    assert [r.get("search") for r in lines(ledger)] == ["val_search/s"] * 3


# ------------------------------------------------------------------------------------------------ every path


def test_the_in_memory_api_refuses_to_test_without_an_entry_and_records_with_one(toy, ledger):
    from haba_core.engine import Distiller
    from haba_core.evaluate import evaluate_synset, random_real_baseline

    ecfg = EvalConfig(epochs=1, seeds=2, test_batch=200)
    synset = Distiller(tiny_config("synset.kind=pixels", "iterations=1")).synset
    with pytest.raises(ConfigError, match="test ledger"):
        evaluate_synset(synset, toy, ecfg, nets=("mlp",), seeds=1)
    with pytest.raises(ConfigError, match="test ledger"):
        random_real_baseline(toy, 1, ecfg, nets=("mlp",), seeds=1)
    assert not ledger.exists()
    entry = LedgerEntry(ledger, "notebook", "eval")
    ev = evaluate_synset(synset, toy, ecfg, nets=("mlp",), seeds=2, ledger=entry)
    random_real_baseline(toy, 1, ecfg, nets=("mlp",), seeds=1, ledger=entry)
    a, b = lines(ledger)
    assert a["protocol_id"] == ev["protocol"]["id"] and a["networks"] == 2 and a["seeds"] == [0, 1]
    assert a["kind"] == "pixels" and b["kind"] == "random_real" and a["run"] == "notebook" and a["purpose"] == "eval"
    assert a["config_hash"] == config_hash({"eval": dataclasses.asdict(ecfg)})


def test_the_cli_records_each_computed_cell_and_nothing_for_reused_ones(tmp_path, ledger):
    from haba_core.cli import main

    run = make_run(tmp_path / "run")
    assert main(["evaluate", "--run", str(run), "--nets", "mlp", "--seeds", "2", "--epochs", "1"]) == 0
    got = lines(ledger)
    ev = io.read_json_strict(run / "evaluation.json")
    assert [r["cell"] for r in got] == ["synset/mlp/s0", "synset/mlp/s1"]  # one task per seed on CPU
    cfg = RunConfig.from_dict(io.read_json_strict(run / "config.json"))
    for r in got:
        assert r["run"] == str(run) and r["purpose"] == "eval" and r["networks"] == 1
        assert r["protocol_id"] == ev["synset"]["protocol"]["id"] and r["config_hash"] == config_hash(cfg.to_dict())
    assert main(["evaluate", "--run", str(run), "--nets", "mlp", "--seeds", "2", "--epochs", "1"]) == 0
    assert len(lines(ledger)) == 2  # reused cells are no new look at the test set


def test_an_evaluation_without_the_override_lands_in_the_run_folders_own_ledger(tmp_path, monkeypatch):
    from haba_core.evaluate import evaluate_run

    monkeypatch.delenv(LEDGER_ENV)
    run = make_run(tmp_path / "run")
    cfg = RunConfig.from_dict(io.read_json_strict(run / "config.json"))
    ecfg = dataclasses.replace(cfg.eval, nets=("mlp",), seeds=1, epochs=1)
    evaluate_run(run, cfg, ecfg, run / "synset.safetensors", baseline="random", log=None)
    own = lines(run / RF.TEST_LEDGER)
    assert [r["kind"] for r in own] == ["haba", "random_real"]


def test_worker_processes_are_recorded_by_the_driver(tmp_path, ledger):
    """Tasks computed in spawned worker processes (as on Ray) are recorded where their results land."""
    from haba_core.evaluate import evaluate_run
    from haba_core.executors import LocalExecutor

    run = make_run(tmp_path / "run")
    cfg = RunConfig.from_dict(io.read_json_strict(run / "config.json"))
    ecfg = dataclasses.replace(cfg.eval, nets=("mlp",), seeds=2, epochs=1)
    with LocalExecutor(workers=2, threads=1) as ex:
        ev = evaluate_run(run, cfg, ecfg, run / "synset.safetensors", executor=ex, log=None)
    assert ev["complete"] and ev["executor"]["processes"]
    assert sorted(r["cell"] for r in lines(ledger)) == ["synset/mlp/s0", "synset/mlp/s1"]


def test_in_run_evaluation_is_recorded_and_needs_a_run_folder_on_the_test_split(tmp_path, ledger):
    from haba_core.engine import Distiller, distill

    distill(tiny_config("iterations=2", "eval_at_end=true", "synset.kind=pixels"), tmp_path / "run")
    (line,) = lines(ledger)
    assert line["purpose"] == "in-run eval" and line["run"] == str(tmp_path / "run")
    assert line["protocol_id"] == io.read_jsonl_strict(tmp_path / "run" / RF.EVALS)[-1]["protocol"]["id"]
    with pytest.raises(ConfigError, match="run folder"):
        Distiller(tiny_config("iterations=1", "eval_at_end=true"))
    # on the validation split, neither a run folder nor a ledger line
    Distiller(tiny_config("iterations=1", "eval_at_end=true", "eval.split=val", "data.val_per_class=2")).run()
    assert len(lines(ledger)) == 1


def test_experts_measure_the_validation_split_and_never_touch_the_test_split(tmp_path, ledger, monkeypatch):
    import haba_core.training as training
    from haba_core.data import load_dataset
    from haba_core.methods.expert_set import read_expert_meta
    from haba_core.methods.experts import resolve_expert_config, train_expert

    ds = load_dataset("toy", train_limit=200, val_per_class=3)
    measured = []
    real = training.test_accuracy

    def spy(net, images, labels, *a, **k):
        measured.append(images)
        return real(net, images, labels, *a, **k)

    monkeypatch.setattr(training, "test_accuracy", spy)
    cfg = resolve_expert_config(["net.width=8", "val_every=1", "data.val_per_class=3"], dataset="toy", epochs=2)
    meta = read_expert_meta(train_expert(cfg, 0, tmp_path, dataset=ds))
    assert len(measured) == 2 and all(x is ds.images_val for x in measured)
    assert "test_acc" not in meta and all(0.0 <= a <= 1.0 for a in meta["val_acc"])
    assert not ledger.exists()


def test_an_expert_set_made_with_test_every_reads_as_val_every():
    from haba_core.methods.experts import ExpertConfig

    assert ExpertConfig.from_dict({"test_every": 5}).val_every == 5


def test_dirty_means_code_not_the_results_a_run_writes(tmp_path, monkeypatch):
    """A bench run rewrites tracked files under bench/results/ as it goes: that is not a dirty checkout; a changed
    source file is."""
    import subprocess

    from haba_core import ledger

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "cpu.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(ledger, "REPO", tmp_path)
    assert ledger.git_state()["dirty"] is False
    (tmp_path / "bench" / "results" / "cpu.md").write_text("new\n")
    assert ledger.git_state()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert ledger.git_state()["dirty"] is True
