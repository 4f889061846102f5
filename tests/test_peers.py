"""The harness that runs the official codes beside ours (``bench.peers.common``) and the side-by-side table
(``bench.peer_speed``), on a stand-in peer: a script in a temporary checkout that loops like the official ones
(a ``wandb.log({"Progress": it})`` and one ``utils.get_network`` call at the start of every iteration)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import peak
from bench.peers import common

ROOT = Path(__file__).resolve().parents[1]
N = 64  # the stand-in's matrix size: one iteration is one N x N x N product


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "peer"
    repo.mkdir()
    (repo / "utils.py").write_text("def get_network(n):\n    import torch\n    return torch.randn(n, n)\n")
    (repo / "train.py").write_text(
        textwrap.dedent(
            f"""
            import sys, torch, wandb
            from utils import get_network
            wandb.init(config={{"iterations": int(sys.argv[1])}})
            for it in range(wandb.config._items["iterations"]):
                wandb.log({{"Progress": it}})
                w = get_network({N})
                torch.mm(w, w)
            open("finished", "w").write("the script ran to its end")
            """
        )
    )
    return repo


def test_the_clock_times_every_iteration_counts_one_and_stops_the_script(checkout, tmp_path):
    clock = common.StepClock(count_flops_at=3)
    marks_wanted = 3 + 1 + 1  # the starts of 3 timed iterations and of the counted one, and the mark that ends it

    def on_log(d):
        if "Progress" in d:
            clock.mark()
            if len(clock.marks) >= marks_wanted + 1:  # + the counted iteration's nan mark
                raise common.StopPeer

    common.fake_wandb(on_log)
    work = tmp_path / "work"
    work.mkdir()
    common.run_script(checkout, "train.py", ["100"], cwd=work)
    assert not (work / "finished").exists()  # stopped after the measured iterations, not run to iteration 100
    steps = clock.steps()
    assert len([s for s in steps if s == s]) == 3 and all(s > 0 for s in steps if s == s)
    assert clock.flops == 2 * N**3  # the counted iteration: one N x N x N product
    out = common.write_result(
        tmp_path / "r.json",
        peer="stand-in",
        row="step",
        checkout=checkout,
        script="train.py",
        argv=["100"],
        clock=clock,
        warmup=1,
        runtime_help=["wandb replaced"],
        settings={},
        threads=1,
    )
    assert json.loads((tmp_path / "r.json").read_text()) == out
    assert len(out["steps_s"]) == 2 and out["commit"] == "unknown"  # not a git checkout


def test_hooked_calls_before_then_the_function():
    calls = []
    f = common.hooked(lambda x: calls.append(("f", x)) or x * 2, lambda: calls.append("before"))
    assert f(3) == 6 and calls == ["before", ("f", 3)]


def test_fashion_mnist_root_unpacks_the_files_torchvision_looks_for(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in common.FASHION_MNIST_FILES:
        with gzip.open(src / name, "wb") as f:
            f.write(name.encode())
    root = common.fashion_mnist_root(tmp_path / "data", source=src)
    for name in common.FASHION_MNIST_FILES:
        assert (root / "FashionMNIST" / "raw" / name.removesuffix(".gz")).read_bytes() == name.encode()
    (src / common.FASHION_MNIST_FILES[0]).unlink()
    with pytest.raises(SystemExit, match="dataset-fashion-mnist"):
        common.fashion_mnist_root(tmp_path / "other", source=src)


def test_the_attainable_peak_is_measured_for_both_precisions():
    torch.set_num_threads(1)
    rates = peak.attainable_peak(reps=1, n=256)
    for p in ("fp32", "bf16"):
        assert rates[p]["peak_flops_s"] == max(rates[p]["matmul_flops_s"], rates[p]["conv_flops_s"]) > 1e8


def test_our_dm_row_counts_the_flops_of_its_convolutions(tmp_path):
    """Our side of the DM row on a 1-image budget with a 2-image real batch: the counted FLOPs are those of the
    ConvNet's convolutions and classifier-free forward passes, recomputed here from the layer shapes."""
    out = tmp_path / "o.json"
    cmd = [sys.executable, "-m", "bench.peer_speed", "--ours", "dm", "--variant", "fp32", "--threads", "1"]
    cmd += ["--warmup", "0", "--iterations", "1", "--flops", "--json", str(out)]
    cmd += ["--set", "net.width=8", "--set", "method.batch_real=2", "--set", "synset.budget_ipc=1"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    r = json.loads(out.read_text())
    assert r["precision"] == "fp32" and r["median_s"] > 0
    # ConvNet-8 on 1x28x28, first padding 3: 32x32 -> 16x16 -> 8x8 conv outputs; per image, multiply-adds:
    width = 8  # depth 3
    macs = 32 * 32 * width * 1 * 9 + 16 * 16 * width * width * 9 + 8 * 8 * width * width * 9
    real, syn = 2, 1  # images per class: the real batch (forward only) and the synthetic set (forward + backward)
    probe = 1  # building the network runs one image through its layers to learn the feature shape
    forward = 2 * macs * (10 * (real + syn) + probe)
    # the synthetic images' backward: the input gradient of every convolution (the images learn; the network's
    # weights do not), as many multiply-adds as the forward pass
    backward = 2 * macs * 10 * syn
    assert r["flops"] == forward + backward


def test_conv_kernel_rates_cover_every_layer_and_kernel():
    torch.set_num_threads(1)
    rates = peak.conv_kernel_rates(batch=2, reps=1, layers=((3, 8), (128, 4)))
    assert sorted(rates) == sorted(f"{p} {c}->128 @{s}x{s}" for p in ("fp32", "bf16") for c, s in ((3, 8), (128, 4)))
    assert all(set(r) == {"forward", "input_grad", "weight_grad"} and min(r.values()) > 0 for r in rates.values())


def test_keeping_freed_memory_changes_no_result(tmp_path):
    """The engine now makes glibc keep freed memory for every method (``Method.reuse_memory``): a faster default
    that must not change a single number. The same tiny DM run, in two processes (the setting is process-wide), with
    it and with glibc's defaults, ends with the same synthetic images to the last bit."""
    script = textwrap.dedent(
        """
        import sys, torch
        import haba_core.engine as engine
        from haba_core.config import resolve_config
        from haba_core.data import load_dataset
        calls = []
        real = engine.reuse_freed_memory
        engine.reuse_freed_memory = lambda: calls.append(real() if sys.argv[1] == "on" else False)
        torch.set_num_threads(1)
        ds = load_dataset("toy", channels=1, im_size=28, num_classes=10)
        cfg = resolve_config(overrides=["data.name=toy", "data.options.im_size=28", "data.options.channels=1",
            "method.name=dm", "synset.kind=pixels", "synset.budget_ipc=1", "net.width=8", "method.batch_real=4",
            "method.precision=fp32", "iterations=3", "snapshot_every=0", "checkpoint_every=0", "seed=0"])
        d = engine.Distiller(cfg, dataset=ds)
        d.run()
        assert calls == [sys.argv[1] == "on"], calls  # glibc took the setting (on), or was left alone (off)
        torch.save(d.synset.state_dict(), sys.argv[2])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}  # glibc's malloc
    for mode in ("on", "off"):
        cmd = [sys.executable, "-c", script, mode, str(tmp_path / f"{mode}.pt")]
        subprocess.run(cmd, cwd=ROOT, check=True, env={**env, "HABA_ALLOCATOR": "system"})
    on, off = (torch.load(tmp_path / f"{m}.pt") for m in ("on", "off"))
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


def test_a_checkout_without_its_script_is_refused_with_what_to_do(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.peer_speed", "--haba", str(tmp_path), "--out", str(tmp_path / "peers")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "no distill_fac.py there" in proc.stderr and "DatasetFactorization" in proc.stderr
    assert not (tmp_path / "peers.json").exists()  # refused before measuring anything
