import json
import os
import subprocess
import sys
from pathlib import Path

from haba_core import io
from haba_core.cli import main


def run_cli(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "haba_core", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_budget_command(capsys):
    assert main(["budget", "--dataset", "cifar10", "--synset", "haba", "--budget-ipc", "10"]) == 0
    out = capsys.readouterr().out
    assert "bases per class      9" in out and "27,840" in out
    assert (
        main(
            [
                "budget",
                "--dataset",
                "fashion_mnist",
                "--synset",
                "haba",
                "--budget-ipc",
                "1",
                "--json",
                "--basis-size",
                "14",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_bases"] == 3


def test_clear_errors_for_bad_input(capsys):
    assert main(["budget", "--dataset", "fashion_mnst"]) == 2
    err = capsys.readouterr().err
    assert "fashion_mnist" in err and "Valid choices" in err
    assert main(["budget", "--dataset", "fashion_mnist", "--budget-ipc", "1", "--basis-size", "full"]) == 2
    assert "basis_size" in capsys.readouterr().err
    assert main(["budget", "--dataset", "fashion_mnist", "--budget-ipc", "1"]) == 0  # auto: 14x14 bases
    assert "14x14" in capsys.readouterr().out


def test_distill_and_evaluate_on_toy(tmp_path):
    run = tmp_path / "r"
    sets = ["data.name=toy", "net.width=16", "method.batch_real=16", "haba.extractor_width=16", "eval.test_batch=200"]
    args = [
        "distill",
        "--run-dir",
        str(run),
        "--method",
        "dm",
        "--synset",
        "haba",
        "--budget-ipc",
        "2",
        "--n-hallucinators",
        "2",
        "--iterations",
        "3",
        "--quiet",
    ]
    for s in sets:
        args += ["--set", s]
    r = run_cli(*args)
    assert json.loads(r.stdout)["state"] == "finished"
    r = run_cli(
        "evaluate", "--run", str(run), "--seeds", "2", "--epochs", "5", "--baseline", "random", "--nets", "convnet,mlp"
    )
    ev = io.read_json_strict(run / "evaluation.json")
    assert set(ev["synset"]["nets"]) == {"convnet", "mlp"} and len(ev["synset"]["nets"]["mlp"]["per_seed"]) == 2
    assert ev["random_real"]["storage"]["n_bases"] >= 1
    # one protocol for every row: the HaBa set and the random real subset share its id
    assert ev["synset"]["protocol"]["standardize"] is False  # the default protocol is plain
    assert ev["synset"]["protocol"]["id"] == ev["random_real"]["protocol"]["id"]
    bad = run_cli("distill", "--run-dir", str(tmp_path / "x"), "--method", "dmm", check=False)
    assert bad.returncode == 2 and "Did you mean 'dm'" in bad.stderr
    bad = run_cli("evaluate", "--run", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_the_installed_haba_command_is_the_cli(tmp_path):
    """`make` installs the project (pip install -e .): a `haba` command beside this interpreter, usable anywhere."""
    haba = Path(sys.executable).parent / "haba"
    assert haba.exists(), "the project is not installed in this environment: run `make setup` (pip install -e .)"
    out = subprocess.run(
        [str(haba), "budget", "--dataset", "fashion_mnist", "--synset", "pixels", "--budget-ipc", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "7,840" in out.stdout or "7840" in out.stdout


def test_export_writes_every_image_the_set_yields(tmp_path, capsys):
    from haba_core.synsets import load_synset
    from workbench.testing import make_run

    run = make_run(tmp_path / "run")
    out = tmp_path / "images.safetensors"
    assert main(["export", "--synset", str(run / "synset.safetensors"), "--out", str(out)]) == 0
    tensors, meta = io.load_tensors(out, expect_format="haba-images")
    images, labels = load_synset(run / "synset.safetensors").materialize(pairing="all")
    assert tensors["images"].shape == images.shape and tensors["labels"].tolist() == labels.tolist()
    assert meta["dataset"]["name"] == "toy" and f"wrote {len(images)} images" in capsys.readouterr().out
