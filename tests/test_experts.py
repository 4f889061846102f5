"""Expert trajectories: they move, their format is recorded, interruption + resume changes nothing, errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from haba_core import io
from haba_core.errors import CheckpointError, ConfigError
from haba_core.methods.expert_set import ExpertSet, read_expert_meta
from haba_core.methods.experts import (
    EXPERT_FORMAT,
    EXPERT_VERSION,
    expert_path,
    resolve_expert_config,
    train_expert,
    train_experts,
)

SETS = ["net.width=8", "train_limit=200", "test_limit=100"]


def cfg(**kw):
    return resolve_expert_config(SETS, dataset="toy", epochs=kw.pop("epochs", 3), batch=64, **kw)


def test_trajectory_moves_and_records_its_recipe(tmp_path):
    c = cfg()
    (path,) = train_experts(c, tmp_path, 1, log=None)
    meta = read_expert_meta(path)
    assert meta["format"] == EXPERT_FORMAT and meta["version"] == EXPERT_VERSION and meta["complete"]
    assert meta["dataset"]["name"] == "toy" and meta["net"] == {"name": "convnet", "params": {"width": 8}}
    assert meta["lr"] == 0.01 and meta["epochs"] == 3 and meta["seed"] == 0 and meta["zca"] is False
    # no validation split here (data.val_per_class=0): no accuracy but train accuracy; never the test split's
    assert len(meta["train_acc"]) == 3 and meta["val_acc"] == [None] * 3 and "test_acc" not in meta
    assert "git" not in json.dumps(meta)
    traj = ExpertSet(tmp_path).trajectory(0)
    assert traj.shape == (4, meta["num_params"])
    for e in range(3):  # every epoch is its own snapshot (tensor.cpu() of a CPU tensor aliases it)
        assert (traj[e + 1] - traj[e]).norm() > 0, e
    manifest = io.read_json_strict(tmp_path / "experts.json")
    assert manifest["format"] == "haba-expert-set" and manifest["config"]["epochs"] == 3


def test_rows_reads_single_epochs(tmp_path):
    train_experts(cfg(epochs=2), tmp_path, 1, log=None)
    s = ExpertSet(tmp_path)
    torch.testing.assert_close(s.rows(0, [2, 0]), s.trajectory(0)[[2, 0]], rtol=0, atol=0)


def test_interrupted_and_resumed_expert_gives_the_same_file(tmp_path):
    c = cfg(epochs=4)
    train_experts(c, tmp_path / "straight", 2, log=None)
    part = tmp_path / "part"
    train_experts(c, part, 0, log=None)  # the manifest only
    assert train_expert(c, 1, part, stop_after_epochs=2) == expert_path(part, 1, partial=True)
    partial_meta = io.load_tensors(expert_path(part, 1, partial=True))[1]
    assert partial_meta["complete"] is False and len(partial_meta["history"]["train_acc"]) == 2
    train_experts(c, part, 2, log=None)  # finishes expert 0, resumes expert 1 at epoch 2
    assert not expert_path(part, 1, partial=True).exists()
    for i in range(2):
        assert expert_path(part, i).read_bytes() == expert_path(tmp_path / "straight", i).read_bytes(), i


def test_finished_experts_are_skipped(tmp_path):
    c = cfg(epochs=1)
    train_experts(c, tmp_path, 1, log=None)
    stamp = expert_path(tmp_path, 0).stat().st_mtime_ns
    train_experts(c, tmp_path, 2, log=None)
    assert expert_path(tmp_path, 0).stat().st_mtime_ns == stamp and expert_path(tmp_path, 1).exists()


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    train_experts(cfg(epochs=1), tmp_path, 1, log=None)
    with pytest.raises(ConfigError, match="lr"):
        train_experts(cfg(epochs=1, lr=0.1), tmp_path, 1, log=None)


def test_a_compiled_expert_follows_the_eager_one_and_joins_the_same_set(tmp_path):
    eager = resolve_expert_config(SETS, dataset="toy", epochs=2, batch=50)  # 200 images: no short last batch
    train_experts(eager, tmp_path / "eager", 1, log=None)
    train_experts(dataclasses.replace(eager, compile=True), tmp_path / "mixed", 1, log=None)
    a, b = ExpertSet(tmp_path / "eager").trajectory(0), ExpertSet(tmp_path / "mixed").trajectory(0)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # the same SGD path, summed in another order
    assert (b[-1] - b[0]).norm() > 0.01
    train_experts(eager, tmp_path / "mixed", 2, log=None)  # compiling is not part of the recipe: no refusal
    assert read_expert_meta(expert_path(tmp_path / "mixed", 1))["config"]["compile"] is False


def test_missing_and_foreign_expert_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*python -m haba_core experts"):
        ExpertSet(tmp_path / "missing")
    (tmp_path / "expert_0000.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupted or foreign"):
        ExpertSet(tmp_path)
    io.save_tensors(tmp_path / "expert_0000.safetensors", {"bases": torch.zeros(2)}, {"format": "haba-synset"})
    with pytest.raises(CheckpointError, match="not an expert trajectory.*haba-synset"):
        ExpertSet(tmp_path)
    io.save_tensors(
        tmp_path / "expert_0000.safetensors",
        {"trajectory": torch.zeros(2, 3)},
        {"format": EXPERT_FORMAT, "version": EXPERT_VERSION + 1},
    )
    with pytest.raises(CheckpointError, match="newer"):
        ExpertSet(tmp_path)


def test_workers_train_several_experts_at_once(tmp_path):
    paths = train_experts(cfg(epochs=1), tmp_path, 2, workers=2, log=None)
    metas = [read_expert_meta(p) for p in paths]
    assert [m["seed"] for m in metas] == [0, 1]
    a, b = ExpertSet(tmp_path).trajectory(0), ExpertSet(tmp_path).trajectory(1)
    assert not torch.equal(a, b)


def test_experts_command(tmp_path):
    out = tmp_path / "exp"
    args = [
        sys.executable,
        "-m",
        "haba_core",
        "experts",
        "--dataset",
        "toy",
        "--out",
        str(out),
        "--num-experts",
        "1",
        "--epochs",
        "1",
        "--batch",
        "64",
        "--quiet",
    ] + [x for s in SETS for x in ("--set", s)]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["experts"] == [str(expert_path(out, 0))]
    assert read_expert_meta(expert_path(out, 0))["epochs"] == 1


def test_expert_config_holds_the_data_config_and_reads_the_old_flat_keys(tmp_path):
    """ExpertConfig's data section is a DataConfig (one definition); configs, manifests and overrides written
    with the old flat names (dataset, data_root, train_limit, data_options.*) still read the same."""
    from haba_core.config import DataConfig
    from haba_core.methods.experts import ExpertConfig, write_manifest

    cfg = resolve_expert_config(["train_limit=50", "data_options.im_size=12", "data.val_per_class=2"], dataset="toy")
    assert cfg.data == DataConfig(name="toy", train_limit=50, val_per_class=2, options={"im_size": 12})
    old = {
        "dataset": "toy",
        "data_root": "elsewhere",
        "train_limit": 50,
        "data_options": {"im_size": 12},
        "val_per_class": 2,
        "net": cfg.net,
        "epochs": cfg.epochs,
    }
    assert ExpertConfig.from_dict(old).data == dataclasses.replace(cfg.data, root="elsewhere")
    io.write_json(tmp_path / "experts.json", {"format": "haba-expert-set", "version": 1, "config": old})
    write_manifest(tmp_path, cfg)  # an old-layout manifest of the same recipe is accepted (data root may move)
    with pytest.raises(ConfigError, match="data.train_limit"):
        write_manifest(tmp_path, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_limit=60)))
