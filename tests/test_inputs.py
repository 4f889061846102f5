"""Bad input gets a clear answer, fast: every class of mistake a new user made, not only the cases found.

- budgets too small for anything answer in milliseconds (the old message recursed exponentially);
- every numeric option is validated where the config is resolved (CLI, app and library alike), with a
  message naming the option, the value and what to use;
- flags that conflict with a resumed run are refused;
- ``basis_size="auto"`` is one rule shared by the CLI, the library and the app, and each says what it chose.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time

import pytest

from haba_core import budget as B
from haba_core.config import DataConfig, EvalConfig, HabaLossConfig, RunConfig, SynsetConfig, resolve_config
from haba_core.data import dataset_info
from haba_core.errors import BudgetError, ConfigError
from haba_core.methods import METHODS, list_methods
from haba_core.synsets import list_synsets
from tests.conftest import distill_command

FMNIST = dataset_info("fashion_mnist")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "haba_core", *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("budget_ipc", [1e-6, 0.001, 0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("kind", list_synsets())
@pytest.mark.parametrize("basis_size", [None, 14, 4])
def test_tiny_budgets_answer_at_once(budget_ipc, kind, basis_size):
    info = dataset_info("cifar100")  # the largest image and class count we register
    t = time.perf_counter()
    try:
        B.solve(info, kind, budget_ipc, basis_size=basis_size, n_hallucinators=10)
    except BudgetError as e:
        assert "Options:" in str(e) and "raise budget_ipc" in str(e)
    B.auto_basis_size(info, kind, budget_ipc, n_hallucinators=10)
    assert time.perf_counter() - t < 0.5


def test_the_budget_command_and_distill_answer_a_tiny_budget_within_seconds(tmp_path):
    r = cli("budget", "--dataset", "fashion_mnist", "--synset", "haba", "--budget-ipc", "0.05", timeout=30)
    assert r.returncode == 0 and "4x4" in r.stdout and "basis_size=auto" in r.stdout
    r = cli("budget", "--dataset", "fashion_mnist", "--synset", "haba", "--budget-ipc", "0.001", timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("error: A budget of IPC 0.001") and "Traceback" not in r.stderr
    r = subprocess.run(
        distill_command(tmp_path / "r", 1, "haba", "--budget-ipc", "0.001"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "cannot hold one basis" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------- basis_size=auto
def test_auto_basis_size_is_one_rule_for_cli_library_and_app(tmp_path):
    from workbench import newrun as NR

    assert B.auto_basis_size(FMNIST, "haba", 1.0, n_hallucinators=5) == 14  # full size does not fit IPC 1
    # at IPC 10 full size fits, but validation chose 20x20 bases (HaBa's table, tested below)
    assert B.auto_basis_size(FMNIST, "haba", 10.0, n_hallucinators=5) == 20
    assert NR.auto_basis_size(FMNIST, "haba", 1.0, n_hallucinators=5) == 14
    plan = B.plan_from_config(FMNIST, SynsetConfig(kind="haba", budget_ipc=1.0))  # the default is auto
    assert plan.basis_shape == (1, 14, 14) and plan.n_bases == 3 and "14x14" in plan.basis_note
    assert plan.to_dict()["basis_note"] == plan.basis_note
    # an explicit full size still asks for a choice, with the options that fit
    with pytest.raises(BudgetError, match="basis_size=20"):
        B.plan_from_config(FMNIST, SynsetConfig(kind="haba", budget_ipc=1.0, basis_size=None))
    # the CLI says what it chose, and the run records it
    r = subprocess.run(
        distill_command(tmp_path / "r", 1, "haba", "--budget-ipc", "1", "--dataset", "toy"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "note: HaBa stores 14x14 bases" in r.stderr and "validation search" in r.stderr
    storage = json.loads((tmp_path / "r" / "storage.json").read_text())
    assert storage["basis_shape"] == [1, 14, 14] and "14x14" in storage["basis_note"]
    # and the app's check shows the same sentence
    check = NR.check(
        NR.build_config(NR.preset_config(None), {"synset.basis_size": NR.AUTO, "data.name": "fashion_mnist"})
    )
    assert any(plan.basis_note == n for n in check.notes), check.notes


# --------------------------------------------------------------------------------- numeric options, one place
def _numeric_fields(cls):
    return [f for f in dataclasses.fields(cls) if any(t in str(f.type) for t in ("int", "float"))]


SECTIONS = {"": RunConfig, "data.": DataConfig, "synset.": SynsetConfig, "haba.": HabaLossConfig, "eval.": EvalConfig}
BAD = {"negative": -5, "zero-ish": -1e-9, "text": "ten", "bool": True, "nan": float("nan")}


@pytest.mark.parametrize("prefix,cls", SECTIONS.items())
def test_every_numeric_option_is_validated_with_a_message_naming_it(prefix, cls):
    checked = 0
    for f in _numeric_fields(cls):
        name = prefix + f.name
        if f.name in ("seed", "val_seed"):  # any integer >= 0 is a seed
            bad = [-1, "ten", 1.5]
        else:
            bad = list(BAD.values())
        for value in bad:
            with pytest.raises(ConfigError) as err:
                resolve_config(overrides={name: value})
            msg = str(err.value)
            assert name in msg and "use" in msg, msg
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("method", list_methods())
def test_every_numeric_hyperparameter_of_every_backend_is_validated(method):
    cfg_cls = METHODS.get(method).Config
    for f in _numeric_fields(cfg_cls):
        for value in (-5, "ten", float("inf")):
            with pytest.raises(ConfigError, match=f"method.{f.name}"):
                METHODS.get(method).make_config({f.name: value})
    # and good values pass, integral floats becoming ints where an integer is wanted
    if any(f.name == "batch_real" for f in dataclasses.fields(cfg_cls)):
        assert METHODS.get(method).make_config({"batch_real": 64.0}).batch_real == 64


def test_good_values_still_resolve():
    cfg = resolve_config(overrides=["iterations=1e3", "synset.basis_size=14", "eval.seeds=5", "haba.batch=null"])
    assert cfg.iterations == 1000 and isinstance(cfg.iterations, int) and cfg.synset.basis_size == 14
    assert resolve_config(overrides=["synset.basis_size=full"]).synset.basis_size is None
    with pytest.raises(ConfigError, match="synset.basis_size"):
        resolve_config(overrides=["synset.basis_size=2"])


@pytest.mark.parametrize(
    "args,message",
    [
        (("--iterations", "-5"), "iterations=-5 is out of range; use an integer >= 1"),
        (("--set", "synset.n_hallucinators=0"), "synset.n_hallucinators=0 is out of range"),
        (("--set", "method.lr_img=-1"), "method.lr_img=-1 is out of range; use a number > 0"),
        (("--set", "eval.seeds=0"), "eval.seeds=0 is out of range"),
        (("--budget-ipc", "0"), "synset.budget_ipc=0.0 is out of range"),
        (("--set", "method.momentum=1.5"), "method.momentum=1.5 is out of range; use a number in [0, 1)"),
    ],
)
def test_distill_refuses_bad_numbers_in_seconds_without_a_traceback(tmp_path, args, message):
    r = subprocess.run(distill_command(tmp_path / "r", 2, "haba", *args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


# ------------------------------------------------------------------------------------ evaluate and resume flags
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("inputs") / "run"
    r = subprocess.run(
        distill_command(run, 2, "pixels", "--budget-ipc", "1", sets=("snapshot_every=0",)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return run


@pytest.mark.parametrize(
    "args,message",
    [
        (("--seeds", "0"), "eval.seeds=0 is out of range"),
        (("--epochs", "-1"), "eval.epochs=-1 is out of range"),
        (("--nets", ","), "--nets is empty"),
        (("--test-limit", "0"), "--test-limit=0 is out of range"),
        (("--set", "eval.lr=0"), "eval.lr=0 is out of range"),
    ],
)
def test_evaluate_refuses_bad_numbers(toy_run, args, message):
    r = cli("evaluate", "--run", str(toy_run), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (toy_run / "evaluation.json").exists()


@pytest.mark.parametrize(
    "args,conflict",
    [
        (("--dataset", "fashion_mnist"), "data.name: the run has 'toy'"),
        (("--synset", "haba"), "synset.kind: the run has 'pixels'"),
        (("--set", "method.lr_img=5"), "method.params.lr_img"),
        (("--seed", "7"), "seed: the run has 0"),
    ],
)
def test_resume_refuses_flags_that_conflict_with_the_run(toy_run, args, conflict):
    r = cli("distill", "--run-dir", str(toy_run), "--resume", "--quiet", *args)
    assert r.returncode == 2 and conflict in r.stderr and "new --run-dir" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_resume_accepts_what_may_change(toy_run):
    r = cli(
        "distill",
        "--run-dir",
        str(toy_run),
        "--resume",
        "--quiet",
        "--iterations",
        "3",
        "--device",
        "cpu",
        "--dataset",
        "toy",
        timeout=120,
    )  # the same dataset is no conflict
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == 3


def test_auto_takes_the_size_a_validation_search_chose_for_the_shape_and_budget(monkeypatch):
    from haba_core.synsets import SYNSETS

    table = {(1, 28, 28): {10.0: (20, "bench/results/val_search/x.md")}}
    monkeypatch.setattr(SYNSETS.get("haba"), "validated_basis_sizes", table)
    assert B.auto_basis_size(FMNIST, "haba", 10.0, n_hallucinators=5) == 20  # instead of full size
    assert B.auto_basis_size(FMNIST, "haba", 9.0, n_hallucinators=5) is None  # other budgets: the rule
    plan = B.plan_from_config(FMNIST, SynsetConfig(kind="haba", budget_ipc=10.0))
    assert plan.basis_shape == (1, 20, 20) and "val_search/x.md" in plan.basis_note
    table[(1, 28, 28)][1.0] = (27, "y")  # a size that does not fit the budget (27x27 bases at IPC 1): the rule
    assert B.auto_basis_size(FMNIST, "haba", 1.0, n_hallucinators=5) == 14


def test_habas_validated_sizes_are_what_the_committed_searches_chose():
    """Each entry of HaBa's table is the basis size of the best combination of the validation search it names (the
    results file beside it), so basis_size=auto follows the evidence on file, and at that size the default 5
    hallucinators score within one std of the best combination (the count stays a plain default)."""
    from haba_core.synsets import SYNSETS

    root = pathlib.Path(__file__).resolve().parent.parent
    for _shape, by_budget in SYNSETS.get("haba").validated_basis_sizes.items():
        for budget, (size, source) in by_budget.items():
            search = json.loads((root / source).with_suffix(".json").read_text())
            shown = "full" if size is None else str(size)
            assert search["best"]["synset.basis_size"] == shown, source
            assert f"synset.budget_ipc={budget:g}" in search["command"], source
            best = max(search["rows"], key=lambda r: r["mean"])
            (default,) = [
                r
                for r in search["rows"]
                if r["combination"]["synset.basis_size"] == shown
                and int(r["combination"].get("synset.n_hallucinators", 5)) == 5
            ]
            assert default["mean"] >= best["mean"] - best["std"], source


def test_habas_validated_lrs_are_what_the_committed_searches_chose():
    """Each entry of HaBa's lr table is, recomputed from every committed hallucinator-lr search of that method and
    budget, the lr of the best row at the validated basis size and the default hallucinator count; and no other
    count's best row beats it by more than one std (so the count stays a plain default)."""
    from haba_core.synsets import SYNSETS

    haba = SYNSETS.get("haba")
    root = pathlib.Path(__file__).resolve().parent.parent
    searches = root / "bench" / "results" / "val_search"
    assert haba.validated_lr_hallucinators, "the table is empty"
    for shape, by_budget in haba.validated_lr_hallucinators.items():
        for (method, budget), (lr, source) in by_budget.items():
            assert (root / source).exists(), source
            size, _ = haba.validated_basis_sizes[shape][budget]
            rows = []
            for path in searches.glob(f"{method}_haba_ipc{budget:g}_*lr_hallucinators*.json"):
                search = json.loads(path.read_text())
                fixed = dict(re.findall(r"--set synset\.(\w+)=(\S+)", search["command"]))
                for r in search["rows"]:
                    setting = {**fixed, **{k.split(".")[-1]: v for k, v in r["combination"].items()}}
                    if setting.get("basis_size") == str(size):
                        rows.append((r["mean"], r["std"], float(setting["lr_hallucinators"]), setting))
            default = [r for r in rows if int(r[3].get("n_hallucinators", 5)) == 5]
            best_default = max(default, key=lambda r: r[0])
            assert best_default[2] == lr, (method, budget, best_default)
            best = max(rows, key=lambda r: r[0])
            assert best[0] <= best_default[0] + best_default[1], (method, budget, best)
