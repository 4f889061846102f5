"""Evaluation: train fresh networks from scratch on a synthetic set and test them on real data.

Protocol (DC/DSA/MTT/HaBa convention): SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs,
batch 256, DSA on every training batch. For HaBa each epoch shows every basis once with a random
hallucinator (``pairing="random"``, the official protocol) or every basis x hallucinator pair
(``"all"``). HaBa's official evaluation also standardizes every batch as a whole, ``(x - x.mean()) / x.std()``,
training and test batches alike; that is the ``standardize`` option, on by default for HaBa synsets only,
and recorded with every result. Reported accuracy is the final network's (never the best over epochs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from haba_core.augment import apply_dsa, sample_dsa_params
from haba_core.nets import create_net

ImageSource = Callable[[torch.Generator], tuple[Tensor, Tensor]]


def standardize(x: Tensor) -> Tensor:
    """HaBa's per-batch standardization: the whole batch to zero mean and unit std."""
    return (x - x.mean()) / x.std().clamp_min(1e-8)


@torch.no_grad()
def test_accuracy(net, images: Tensor, labels: Tensor, batch: int = 1000, std: bool = False) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        x = standardize(x) if std else x
        correct += (net(x).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / max(1, len(images))


def train_from_scratch(
    source: ImageSource,
    dataset,
    net_name: str,
    epochs: int,
    lr: float,
    seed: int,
    batch: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa_strategy: str = "",
    std: bool = False,
    test_batch: int = 1000,
    net_params: dict | None = None,
) -> dict:
    """Train one fresh ``net_name`` for ``epochs`` on ``source(generator) -> (images, labels)`` (called
    once per epoch, so HaBa draws fresh hallucinator pairings) and return its final test accuracy."""
    info = dataset.info
    device = dataset.images_test.device
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = create_net(net_name, info.channels, info.num_classes, info.im_size, **(net_params or {})).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        with torch.no_grad():
            images, labels = source(g)
        order = torch.randperm(len(images), generator=g).to(images.device)
        for i in range(0, len(images), batch):
            idx = order[i : i + batch]
            x, y = images[idx], labels[idx]
            if dsa_strategy:
                x = apply_dsa(x, sample_dsa_params(dsa_strategy, len(x), g, x.device, tuple(info.im_size)))
            if std:
                x = standardize(x)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    acc = test_accuracy(net, dataset.images_test, dataset.labels_test, test_batch, std)
    return {"acc": acc, "train_s": train_s, "test_s": time.perf_counter() - t1, "seed": seed, "net": net_name}


def summarize(accs: list[float]) -> dict:
    mean = statistics.fmean(accs) if accs else float("nan")
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(accs), "per_seed": accs}


def protocol_of(cfg, kind: str, lr: float | None, dsa_strategy: str) -> dict:
    """The evaluation protocol actually used, recorded next to every result."""
    std = cfg.standardize if cfg.standardize is not None else kind == "haba"
    return {
        "epochs": cfg.epochs,
        "batch": cfg.batch,
        "lr": lr if lr is not None else (cfg.lr if cfg.lr is not None else 0.01),
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "dsa": dsa_strategy if cfg.dsa else "",
        "pairing": cfg.pairing if kind == "haba" else "n/a",
        "standardize": bool(std),
        "reported": "final",
    }


def evaluate_source(
    source: ImageSource, dataset, protocol: dict, nets: Iterable[str], seeds: int, seed: int = 0
) -> dict:
    """Train ``seeds`` fresh networks per architecture; mean +- std of final test accuracy."""
    per_net = {}
    for name in nets:
        runs = [
            train_from_scratch(
                source,
                dataset,
                name,
                protocol["epochs"],
                protocol["lr"],
                seed + k,
                protocol["batch"],
                protocol["momentum"],
                protocol["weight_decay"],
                protocol["dsa"],
                protocol["standardize"],
            )
            for k in range(seeds)
        ]
        per_net[name] = {
            **summarize([r["acc"] for r in runs]),
            "train_s": statistics.median(r["train_s"] for r in runs),
            "test_s": statistics.median(r["test_s"] for r in runs),
        }
    return per_net


def evaluate_synset(synset, dataset, cfg, nets=("convnet",), seeds=3, lr=None, dsa_strategy="", seed=0) -> dict:
    """Evaluate a synset under ``cfg`` (an EvalConfig). Returns per-net results, protocol and storage."""
    lr = lr if lr is not None else synset.extra.get("syn_lr")
    protocol = protocol_of(cfg, synset.kind, lr, dsa_strategy)
    device = dataset.images_test.device
    synset = synset.to(device)
    pairing = cfg.pairing if synset.kind == "haba" else "random"

    def source(g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = synset.materialize(g, pairing=pairing)
        return x.detach(), y

    with torch.enable_grad():
        per_net = evaluate_source(source, dataset, protocol, nets, seeds, seed)
    return _result(per_net, protocol, synset.storage())


def random_real_baseline(dataset, ipc: int, cfg, nets=("convnet",), seeds=3, dsa_strategy="", seed=0) -> dict:
    """The random-real-subset baseline: ``ipc`` real images per class (a new draw per network seed)."""
    protocol = protocol_of(cfg, "pixels", None, dsa_strategy)
    info = dataset.info
    per_net = {}
    for name in nets:
        accs, train_s = [], []
        for k in range(seeds):
            images, labels = dataset.subset_random(ipc, torch.Generator().manual_seed(seed + k))
            r = evaluate_source(lambda g: (images, labels), dataset, protocol, [name], 1, seed + k)[name]
            accs += r["per_seed"]
            train_s.append(r["train_s"])
        per_net[name] = {**summarize(accs), "train_s": statistics.median(train_s)}
    c, h, w = info.channels, *info.im_size
    storage = {
        "kind": "random_real",
        "n_bases": ipc,
        "images_per_class": ipc,
        "floats_total": ipc * info.num_classes * c * h * w,
        "ipc_equivalent": float(ipc),
    }
    return _result(per_net, protocol, storage)


def _result(per_net: dict, protocol: dict, storage: dict) -> dict:
    summary = ", ".join(f"{n} {100 * r['mean']:.2f}+-{100 * r['std']:.2f}" for n, r in per_net.items())
    return {"nets": per_net, "protocol": protocol, "storage": storage, "summary": summary}
