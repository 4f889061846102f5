"""Batched (grouped) vs sequential multi-seed evaluation, side by side in one process, epoch by epoch.

For each architecture, one ``GroupedTrainer`` (S seeds as one grouped network) and one ``SequentialTrainer``
(the same S seeds one after another) train on the same small training set; their epochs alternate (the
order flips every epoch), so both paths see the same machine load even on a shared machine whose load
drifts from minute to minute. Reported per net: median seconds per epoch (all S seeds) of each path and
their ratio (sequential / grouped: above 1 means grouped is faster), the ratio of the summed epoch times,
and the same for the test pass (``--test-repeats`` alternations). Both paths draw the same batches, so
their final accuracies agree (``max |acc diff|``).

    .venv/bin/python scripts/bench_eval_batched.py --nets mlp,lenet,convnet --seeds 3 --epochs 30 --threads 1

Defaults are Fashion-MNIST-sized: 1x28x28 images, 10 classes, ``--ipc`` real images per class as the
training set (IPC 3 = 30 images, the size of a HaBa set at a budget of IPC 1 with 14x14 bases), DSA on,
batch 256, lr 0.01, and the test pass on ``--val-images`` held-out training images (the validation split: a speed
study has no business with the test split). ``--json PATH`` writes every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench.provenance import provenance
from haba_core.augment import DSA_DEFAULT
from haba_core.data import dataset_info, load_dataset
from haba_core.grouped import GroupedTrainer, NotStackable
from haba_core.training import Recipe, SequentialTrainer

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_net(net: str, ds, images, labels, a) -> dict | None:
    seeds = list(range(a.seeds))
    recipe = Recipe(a.epochs, 0.01, dsa="" if a.no_dsa else DSA_DEFAULT, standardize=a.standardize)
    sources = [lambda g: (images, labels)] * a.seeds
    try:
        grouped, setup_g = timed(lambda: GroupedTrainer(sources, ds, net, recipe, seeds))
    except NotStackable as e:
        print(f"  {net}: no grouped form ({e}); skipped", flush=True)
        return None
    seq, setup_s = timed(lambda: SequentialTrainer(sources, ds, net, recipe, seeds))
    pair = (("grouped", grouped), ("sequential", seq))
    ep = {"grouped": [], "sequential": []}
    for e in range(a.epochs):
        for name, trainer in pair if e % 2 == 0 else pair[::-1]:
            ep[name].append(timed(trainer.epoch)[1])
    te = {"grouped": [], "sequential": []}
    accs = {}
    for r in range(a.test_repeats):
        for name, trainer in pair if r % 2 == 0 else pair[::-1]:
            accs[name], t = timed(trainer.test)
            te[name].append(t)
    skip = 1 if a.epochs > 2 else 0  # the first epoch pays for oneDNN's kernel set-up
    med = {k: statistics.median(v[skip:]) for k, v in ep.items()}
    ratios = [s / g for s, g in zip(ep["sequential"][skip:], ep["grouped"][skip:], strict=True)]
    row = {
        "net": net,
        "seq_epoch_s": med["sequential"],
        "grp_epoch_s": med["grouped"],
        "epoch_speedup_median": statistics.median(ratios),
        "train_speedup_total": sum(ep["sequential"]) / sum(ep["grouped"]),
        "seq_test_s": statistics.median(te["sequential"]),
        "grp_test_s": statistics.median(te["grouped"]),
        "test_speedup": statistics.median(te["sequential"]) / statistics.median(te["grouped"]),
        "setup_s": {"grouped": setup_g, "sequential": setup_s},
        "max_acc_diff": max(abs(x - y) for x, y in zip(accs["grouped"], accs["sequential"], strict=True)),
        "epoch_s": ep,
        "test_s": te,
        "load_end": os.getloadavg()[0],
    }
    print(
        f"  {net:9s} epoch {1000 * row['seq_epoch_s']:8.1f} ms seq / {1000 * row['grp_epoch_s']:8.1f} ms grouped"
        f" (median ratio {row['epoch_speedup_median']:.2f}x, total {row['train_speedup_total']:.2f}x)   test "
        f"{row['seq_test_s']:6.2f} / {row['grp_test_s']:6.2f} s = {row['test_speedup']:.2f}x   "
        f"max |acc diff| {row['max_acc_diff']:.4f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--nets", default="mlp,lenet,convnet,alexnet,vgg11,resnet18")
    p.add_argument("--seeds", type=int, default=3, help="networks trained together (S)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ipc", type=int, default=3, help="training images per class")
    p.add_argument("--val-images", type=int, default=1000, help="held-out training images the test pass measures")
    p.add_argument("--test-repeats", type=int, default=2, help="alternations of the two test passes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    p.add_argument("--no-dsa", action="store_true")
    p.add_argument("--standardize", action="store_true", help="HaBa's per-batch standardization")
    p.add_argument("--json", help="write all measurements here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    per_class = max(1, a.val_images // dataset_info(a.dataset).num_classes)
    ds = load_dataset(a.dataset, root=a.data_root, val_per_class=per_class).evaluated_on("val")
    images, labels = ds.subset_random(a.ipc, torch.Generator().manual_seed(0))
    head = (
        f"{ds.info.name}: {tuple(images.shape)} training images, {len(ds.labels_test)} validation, S={a.seeds} "
        f"seeds, {a.epochs} epochs alternating, DSA {'off' if a.no_dsa else 'on'}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"
    )
    print(head, flush=True)
    rows = [r for net in a.nets.split(",") if (r := bench_net(net, ds, images, labels, a))]
    print()
    print(
        f"| net | sequential s/epoch ({a.seeds} seeds) | grouped s/epoch | speedup (median of epoch ratios) | "
        "speedup (total) | test speedup |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['net']} | {r['seq_epoch_s']:.3f} | {r['grp_epoch_s']:.3f} | {r['epoch_speedup_median']:.2f}x | "
            f"{r['train_speedup_total']:.2f}x | {r['test_speedup']:.2f}x |"
        )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps(
                {**provenance("scripts/bench_eval_batched.py", argv), "setup": head, "args": vars(a), "rows": rows},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
