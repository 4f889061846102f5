"""Our side of each row of ``bench.peer_speed``, run in its own process (``python -m bench.peer_speed --ours ROW``):
the same work as the official code's row, through our engine, timed, with its FLOPs counted on the float32 eager
graph with ATen's pooling (the official codes' arithmetic)."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.speed import DM_SETTING  # the same DM work as bench.speed's row

ROOT = Path(__file__).resolve().parents[2]
EVAL_EPOCHS = 51  # the official evaluation's epochs at --epoch_eval_train 50
OUR_VARIANTS = {
    "default": [],
    "fp32": ["method.precision=fp32", "eval.precision=fp32"],
}

DC_SETTING = [
    "data.name=fashion_mnist",
    "synset.kind=pixels",
    "synset.budget_ipc=1",
    "net.width=128",
    "method.batch_real=256",
    "method.lr_img=0.1",
]


def _distill_row(row: str, variant: str, warmup: int, iterations: int, flops: bool, overrides: list[str]) -> dict:
    """Time ``warmup + iterations`` outer iterations of our distillation for ``row``; with ``flops``, count one
    more iteration's FLOPs on the float32 eager graph with ATen's pooling (the peers' arithmetic). ``overrides``
    go after the row's settings (the tests shrink a row with them)."""
    from haba_core.config import resolve_config
    from haba_core.engine import Distiller
    from haba_core.nets.layers import AvgPool2x2

    extra = [o for o in OUR_VARIANTS[variant] if o.startswith("method.")]
    with tempfile.TemporaryDirectory() as tmp:
        if row.startswith("mtt"):
            from bench.profile_mtt import cifar_setting

            ds, setting = cifar_setting(tmp, kind="haba" if row == "mtt_haba" else "pixels")
        else:
            from haba_core.data import load_dataset

            ds = load_dataset("fashion_mnist", root=str(ROOT / "data"))
            setting = DM_SETTING if row == "dm" else [*DC_SETTING, f"method.name={row}"]
        setting = [*setting, *overrides]
        steps = ["snapshot_every=0", "checkpoint_every=0", "seed=0"]
        cfg = resolve_config(overrides=[*setting, *extra, *steps, f"iterations={warmup + iterations}"])
        d = Distiller(cfg, dataset=ds)
        d.run()
        result = {
            "median_s": statistics.median(d.step_times[warmup:]),
            "steps_s": [round(t, 4) for t in d.step_times[warmup:]],
            "precision": d.method.precision,
            "settings": {"overrides": [*setting, *extra], "threads": torch.get_num_threads()},
        }
        if flops:
            from torch.utils.flop_counter import FlopCounterMode

            eager = [*setting, "method.precision=fp32", *steps, "iterations=1"]
            if not row.startswith("mtt"):  # DM, DC and DSA may compile their real pass; MTT never compiles
                eager.append("method.compile=false")
            d = Distiller(resolve_config(overrides=eager), dataset=ds)
            AvgPool2x2.matmul = False
            with FlopCounterMode(display=False) as counter:
                d.run()
            AvgPool2x2.matmul = True
            result["flops"] = int(counter.get_total_flops())
    return result


def _eval_row(row: str, variant: str, workers: int, flops: bool, overrides: list[str] = ()) -> dict:
    """Evaluate the CIFAR10-shaped HaBa set of ``bench.speed`` (100 bases x 5 hallucinators): one network
    (``eval_1``) or five (``eval_5``), ``EVAL_EPOCHS`` epochs each, tested on 10,000 images, with ``workers``
    processes."""
    from bench.speed import _eval_run
    from haba_core import runfolder as RF
    from haba_core.config import resolve_config
    from haba_core.evaluate import evaluate_run
    from haba_core.executors import make_executor

    nets = 1 if row == "eval_1" else 5
    extra = [*(o for o in OUR_VARIANTS[variant] if o.startswith("eval.")), *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        run, cfg = _eval_run(Path(tmp))
        ecfg = resolve_config(overrides=[f"eval.epochs={EVAL_EPOCHS}", f"eval.seeds={nets}", *extra]).eval
        executor = make_executor("local", workers=workers)
        t0 = time.perf_counter()
        ev = evaluate_run(run, cfg, ecfg, RF.synset_path(run), executor=executor, log=None)
        wall = time.perf_counter() - t0
        executor.close()
    net = ev["synset"]["nets"]["convnet"]
    result = {
        "median_s": wall,
        "steps_s": [round(wall, 3)],
        "precision": ev["synset"]["protocol"].get("precision", "fp32"),
        "train_s": net["train_s"],
        "test_s": net["test_s"],
        "settings": {"overrides": [f"eval.epochs={EVAL_EPOCHS}", f"eval.seeds={nets}", *extra], "workers": workers},
    }
    if flops:
        result["flops"] = _eval_flops(nets)
    return result


def _eval_flops(nets: int) -> int:
    """FLOPs of evaluating ``nets`` networks: one epoch of training and one test pass counted on the float32 eager
    graph (the difference of a 2-epoch and a 1-epoch count), the epoch multiplied by ``EVAL_EPOCHS`` (every epoch
    does the same work)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.speed import _eval_run
    from haba_core import runfolder as RF
    from haba_core.config import resolve_config
    from haba_core.evaluate import evaluate_run
    from haba_core.nets.layers import AvgPool2x2

    counts = {}
    for epochs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            run, cfg = _eval_run(Path(tmp))
            ecfg = resolve_config(overrides=[f"eval.epochs={epochs}", "eval.seeds=1", "eval.precision=fp32"]).eval
            AvgPool2x2.matmul = False
            with FlopCounterMode(display=False) as counter:
                evaluate_run(run, cfg, ecfg, RF.synset_path(run), log=None)
            AvgPool2x2.matmul = True
            counts[epochs] = counter.get_total_flops()
    epoch = counts[2] - counts[1]
    return int(nets * (counts[1] + (EVAL_EPOCHS - 1) * epoch))


def run_ours(a) -> int:
    torch.set_num_threads(a.threads)
    if a.allocator == "glibc-noreuse":  # the engine and the evaluation as they were: glibc's defaults
        import haba_core.engine
        import haba_core.evaluate

        haba_core.engine.reuse_freed_memory = haba_core.evaluate.reuse_freed_memory = lambda: False
    if a.ours.startswith("eval"):
        result = _eval_row(a.ours, a.variant, a.workers, a.count_flops, a.overrides)
    else:
        result = _distill_row(a.ours, a.variant, a.warmup, a.iterations, a.count_flops, a.overrides)
    result["allocator"] = a.allocator
    Path(a.json).write_text(json.dumps(result, indent=1))
    return 0
