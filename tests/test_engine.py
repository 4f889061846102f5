import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from haba_core import io
from haba_core.engine import Distiller, distill
from haba_core.errors import ConfigError
from haba_core.synsets import SYNSETS, list_synsets, load_synset
from tests.conftest import distill_command, tiny_config


def synset_tensors(d):
    return {k: v.detach().clone() for k, v in d.synset.state_dict().items()}


@pytest.mark.parametrize("kind", list_synsets())
def test_dm_run_changes_synset_and_writes_run_folder(tmp_path, kind):
    cfg = tiny_config(f"synset.kind={kind}", "synset.budget_ipc=2", "synset.n_hallucinators=2")
    d = Distiller(cfg)
    before = synset_tensors(d)
    d = distill(cfg, tmp_path / "run")
    after = d.synset.state_dict()
    for name, _ in d.synset.named_parameters():  # bases, and HaBa's hallucinators, all learn
        assert not torch.equal(before[name], after[name]), name
    run = tmp_path / "run"
    status = io.read_json_strict(run / "status.json")
    assert status["state"] == "finished" and status["step"] == 4
    metrics = io.read_jsonl_strict(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    if SYNSETS.get(kind).contrastive:
        assert {"haba_cos", "extractor_ce", "extractor_supcon", "extractor_likelihood"} <= set(metrics[0])
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [
        "step_0000002.safetensors",
        "step_0000004.safetensors",
    ]
    cfg_saved = json.loads((run / "config.json").read_text())
    assert cfg_saved["synset"]["kind"] == kind
    s = load_synset(run / "synset.safetensors")
    torch.testing.assert_close(s.bases, d.synset.bases.detach())


def test_same_seed_same_result():
    cfg = tiny_config("iterations=3")
    a = distill(cfg).synset.state_dict()
    b = distill(cfg).synset.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = distill(cfg.replace(seed=1)).synset.state_dict()
    assert not torch.equal(a["bases"], c["bases"])


def test_resume_continues_exactly(tmp_path):
    # eval_every: evaluations in between must not shift the run's RNG stream
    cfg = tiny_config("iterations=6", "checkpoint_every=2", "eval_every=3", "eval.epochs=1")
    full = distill(cfg, tmp_path / "full").synset.state_dict()
    # run 4 iterations of the same config, then "resume" to 6: identical to the uninterrupted run
    distill(cfg.replace(iterations=4), tmp_path / "part")
    (tmp_path / "part" / "synset.safetensors").unlink()
    io.append_jsonl(tmp_path / "part" / "metrics.jsonl", {"step": 5, "loss": 1.0})  # a step after the checkpoint
    resumed = distill(cfg, tmp_path / "part", resume=True).synset.state_dict()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    steps = [m["step"] for m in io.read_jsonl_strict(tmp_path / "part" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_run_folder_written_before_synset_params_resumes_through_the_cli(tmp_path, capsys):
    """Run folders from before ``synset.params`` hold HaBa's options beside ``synset.kind``: they resume as they
    were made, and the resumed run writes the current layout."""
    from haba_core.cli import main

    run = tmp_path / "run"
    cfg = tiny_config("iterations=2", "checkpoint_every=1", "synset.n_hallucinators=3")
    distill(cfg, run)
    saved = io.read_json_strict(run / "config.json")
    old = {**saved, "synset": {k: v for k, v in saved["synset"].items() if k != "params"}}
    old["synset"].update(n_hallucinators=3, single_channel=False)
    io.write_json(run / "config.json", old)
    assert main(["distill", "--run-dir", str(run), "--resume", "--iterations", "3", "--quiet"]) == 0
    assert load_synset(run / "synset.safetensors").n_hallucinators == 3
    params = io.read_json_strict(run / "config.json")["synset"]["params"]  # the options added since get their defaults
    assert params == {"n_hallucinators": 3, "single_channel": False, "freeze_hallucinators": False}
    # asking for the saved value in the old shorthand is no conflict; another value is
    assert (
        main(["distill", "--run-dir", str(run), "--resume", "--iterations", "4", "--n-hallucinators", "3", "--quiet"])
        == 0
    )
    capsys.readouterr()
    assert (
        main(["distill", "--run-dir", str(run), "--resume", "--iterations", "5", "--n-hallucinators", "2", "--quiet"])
        != 0
    )
    assert "synset.params.n_hallucinators: the run has 3, the command asks for 2" in capsys.readouterr().err


def test_kill_and_resume_subprocess(tmp_path):
    """A real process killed with SIGKILL mid-run resumes from its last checkpoint, nothing lost."""
    run = tmp_path / "run"
    sets = ("method.batch_real=16", "haba.extractor_width=16", "checkpoint_every=5", "snapshot_every=1000")
    args = distill_command(run, 400, "haba", "--budget-ipc", "2", "--n-hallucinators", "2", sets=sets)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "checkpoints" / "latest.json").exists() and io.read_json_strict(run / "checkpoints" / "latest.json")[
            "step"
        ] >= 10:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    ckpt_step = io.read_json_strict(run / "checkpoints" / "latest.json")["step"]
    assert ckpt_step >= 10
    assert io.read_json_strict(run / "status.json")["state"] == "running"  # killed: never marked finished
    r = subprocess.run(
        distill_command(run, ckpt_step + 5, "haba", "--budget-ipc", "2", "--n-hallucinators", "2", sets=sets)
        + ["--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert io.read_json_strict(run / "status.json")["state"] == "finished"
    steps = [m["step"] for m in io.read_jsonl_strict(run / "metrics.jsonl")]
    assert steps == list(range(1, ckpt_step + 6))


def test_sigterm_cancels_with_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = distill_command(run, 100000, "pixels", sets=("method.batch_real=8", "checkpoint_every=100000"))
    p = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 3
    status = io.read_json_strict(run / "status.json")
    assert status["state"] == "cancelled"
    assert io.read_json_strict(run / "checkpoints" / "latest.json")["step"] == status["step"] > 0


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = tiny_config("iterations=1")
    distill(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        distill(cfg, tmp_path / "run")


def test_nan_loss_fails_clearly_and_keeps_checkpoint(tmp_path):
    cfg = tiny_config("iterations=6", "checkpoint_every=2", "synset.kind=pixels", "method.lr_img=1e30")
    with pytest.raises(Exception, match="lower the learning rates"):
        distill(cfg, tmp_path / "run")
    status = io.read_json_strict(tmp_path / "run" / "status.json")
    assert status["state"] == "failed" and "learning rates" in status["error"]


def test_eval_at_end_records_results(tmp_path):
    cfg = tiny_config("iterations=2", "eval_at_end=true", "synset.kind=pixels")
    distill(cfg, tmp_path / "run")
    evals = io.read_jsonl_strict(tmp_path / "run" / "evals.jsonl")
    assert evals and 0 <= evals[0]["nets"]["convnet"]["mean"] <= 1
    assert evals[0]["protocol"]["reported"] == "final"


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path):
    cfg = tiny_config("iterations=4", "checkpoint_every=2", "synset.kind=pixels")
    distill(cfg, tmp_path / "run")
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("ckpt_*"))
    assert [p.name for p in ckpts] == ["ckpt_0000002.safetensors", "ckpt_0000004.safetensors"]
    ckpts[-1].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        d = distill(cfg.replace(iterations=5), tmp_path / "run", resume=True)
    assert d.step == 5
    steps = [m["step"] for m in io.read_jsonl_strict(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


def test_foreign_or_corrupted_checkpoints_raise_clear_errors(tmp_path):
    from haba_core.errors import CheckpointError

    cfg = tiny_config("iterations=2", "checkpoint_every=2", "synset.kind=pixels")
    distill(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt_0000002.safetensors"
    # a synset file is a safetensors file of ours, but not a checkpoint
    ckpt.write_bytes((tmp_path / "run" / "synset.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="No readable checkpoint"):
        distill(cfg.replace(iterations=3), tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="no config.json"):
        distill(cfg, tmp_path / "empty", resume=True)
    # a checkpoint of another config (haba) cannot be loaded into a pixels run
    distill(tiny_config("iterations=2", "checkpoint_every=2"), tmp_path / "haba")
    d = Distiller(cfg)
    with pytest.raises(CheckpointError, match="does not fit"):
        d.load_checkpoint(tmp_path / "haba" / "checkpoints" / "ckpt_0000002.safetensors")


def test_engine_imports_no_ui_packages():
    code = (
        "import sys, haba_core, haba_core.engine, haba_core.cli, haba_core.evaluate, haba_core.methods;"
        "bad = [m for m in ('streamlit', 'plotly', 'ipywidgets') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize(
    ("method", "iterations", "default_lr", "lr_img"),
    [("dm", 15, 5e-5, 1.0), ("dc", 10, 1e-3, 0.1), ("dsa", 10, 3e-4, 0.1)],
)
def test_haba_default_hallucinator_lr_keeps_hallucinations_bounded(method, iterations, default_lr, lr_img):
    """The backend's default hallucinator lr keeps images near the data (below the explorer's blown-up mark);
    at its lr_img they blow up. (Toy data, reference ConvNet: DM reaches ~22 at the default, 2e7 at lr_img;
    on Fashion-MNIST the DM preset stays under 10.)"""
    from workbench.grids import EXPLODED

    # DC/DSA at 1/1 loops: the tiny budget (2) takes DC's IPC-10 loops, 10/50, which cost minutes and test nothing more
    loops = ("method.outer_loop=1", "method.inner_loop=1") if method in ("dc", "dsa") else ()
    cfg = tiny_config(
        f"method.name={method}", f"iterations={iterations}", "net.width=32", "method.batch_real=32", *loops
    )
    d = distill(cfg)
    assert d.method.lr_hallucinators == default_lr and d.method.lr_img == lr_img
    assert d.synset.materialize(pairing="all")[0].abs().max() < EXPLODED
    d = distill(cfg.replace(synset=cfg.synset.__class__(**{**cfg.synset.__dict__, "lr_hallucinators": lr_img})))
    assert d.synset.materialize(pairing="all")[0].abs().max() > 10 * EXPLODED


def test_an_unset_hallucinator_lr_takes_the_validated_one_for_the_method_shape_and_budget(tmp_path, monkeypatch):
    """Where a validation search chose the hallucinators' lr (per method, image shape and budget) and the config
    leaves it unset, the run learns at it, records it in config.json and says so; elsewhere the method's default."""
    haba = SYNSETS.get("haba")
    cfg = tiny_config("synset.kind=haba", "synset.budget_ipc=2", "synset.n_hallucinators=2", "iterations=1")
    info = Distiller(cfg).dataset.info
    table = {(info.channels, *info.im_size): {("dm", 2.0): (7e-4, "bench/results/val_search/x.md")}}
    monkeypatch.setattr(haba, "validated_lr_hallucinators", table)
    d = distill(cfg, tmp_path / "run")
    (group,) = [g for g in d.optimizer.param_groups if g["name"] == "hallucinators"]
    assert group["lr"] == 7e-4 and any("lr 0.0007" in n and "x.md" in n for n in d.notes)
    assert io.read_json_strict(tmp_path / "run" / "config.json")["synset"]["lr_hallucinators"] == 7e-4
    for other in (
        cfg.replace(synset=cfg.synset.__class__(**{**cfg.synset.__dict__, "lr_hallucinators": 3e-5})),  # set: kept
        tiny_config("synset.kind=haba", "synset.budget_ipc=3", "synset.n_hallucinators=2", "iterations=1"),
    ):
        d = Distiller(other)
        (group,) = [g for g in d.optimizer.param_groups if g["name"] == "hallucinators"]
        assert group["lr"] == (3e-5 if other.synset.lr_hallucinators else d.method.lr_hallucinators)
        assert not any("validation search chose" in n and "lr" in n for n in d.notes)
