"""Evaluation: train fresh networks from scratch on a synthetic set and test them on real data.

Protocol (DC/DSA/MTT/HaBa convention): SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs,
batch 256, DSA on every training batch. For HaBa each epoch shows every basis once with a random
hallucinator (``pairing="random"``, the official protocol) or every basis x hallucinator pair
(``"all"``). HaBa's official evaluation also standardizes every batch as a whole, ``(x - x.mean()) / x.std()``,
training and test batches alike, *before* DSA (the reference order); that is the ``standardize`` option.
All of this is one :class:`~haba_core.protocol.EvalProtocol`, the same for every kind of set (HaBa, pixels,
random real), recorded with every result (``protocol``: its fields, ``name`` and ``id``). Reported accuracy
is the final network's (never the best over epochs).

Three layers:

- one network: :class:`SeedTrainer` / :func:`train_from_scratch` (the reference, one seed at a time);
- several seeds of one architecture at once: :class:`GroupedTrainer` stacks the S networks into one network
  with S-grouped convolutions and per-seed linear layers (:func:`stack_nets`); each seed keeps its own
  initialisation (``torch.manual_seed(seed)``) and its own generator for data order, HaBa pairings and DSA
  draws, consumed in the same order as the sequential path, so the two paths train the same networks on the
  same batches (equal up to floating-point summation order). :func:`train_seeds` picks the path (grouped by
  default on CUDA; on CPU it measured no faster, see ``scripts/bench_eval_batched.py``) and falls back to
  the sequential one where stacking does not apply, recording which path ran;
- a run folder's cross-architecture matrix: :func:`evaluate_run` splits the work into cells (source x net
  x seeds), runs them through an executor (``haba_core.executors``: this process, a process pool or Ray),
  writes every finished cell atomically to ``RUN/eval/cells/<tag>/<net>_s<seed>.json`` and aggregates the
  cells into ``RUN/evaluation.json`` and ``RUN/eval/matrix.csv``. A killed or failed evaluation, run again,
  computes only the missing cells. ``<tag>`` names the source and hashes everything a cell depends on (the
  synset file's bytes, the protocol, the data), so cells of another synset or protocol are never reused.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io as _io
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haba_core.devices import resolve_device
from haba_core.nets import create_net
from haba_core.protocol import EvalProtocol, distinct_protocols
from haba_core.training import augment_batch, standardize, test_accuracy, train_epoch  # noqa: F401

ImageSource = Callable[[torch.Generator], tuple[Tensor, Tensor]]


_augment = augment_batch  # the name tests/test_fidelity.py pins the order by


class SeedTrainer:
    """One fresh network trained on ``source`` with seed ``seed``: :meth:`epoch` runs one epoch, :meth:`test`
    measures the final accuracy. The reference path; :func:`train_from_scratch` runs it to the end.

    Draw order on the seed's generator, per epoch: ``source(g)`` (HaBa pairings), the permutation, then one
    DSA draw per batch. The initialisation comes from ``torch.manual_seed(seed)``.
    """

    path = "sequential"

    def __init__(self, source: ImageSource, dataset, net_name: str, epochs: int, lr: float, seed: int,
                 batch: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4, dsa_strategy: str = "",
                 std: bool = False, net_params: dict | None = None):  # fmt: skip
        info = dataset.info
        self.source, self.dataset, self.batch, self.dsa, self.std = source, dataset, batch, dsa_strategy, std
        torch.manual_seed(seed)
        self.g = torch.Generator().manual_seed(seed)
        self.net = create_net(net_name, info.channels, info.num_classes, info.im_size, **(net_params or {}))
        self.net = self.net.to(dataset.images_test.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=[epochs // 2], gamma=0.1)

    def epoch(self) -> None:
        with torch.no_grad():
            images, labels = self.source(self.g)
        train_epoch(self.net, self.opt, images, labels, self.batch, self.g, self.dsa, self.std,
                    self.dataset.info.im_size)  # fmt: skip
        self.sched.step()

    def test(self, test_batch: int = 1000) -> list[float]:
        return [test_accuracy(self.net, self.dataset.images_test, self.dataset.labels_test, test_batch, self.std)]


class SequentialTrainer:
    """S :class:`SeedTrainer` one after another, with the interface of :class:`GroupedTrainer`."""

    path = "sequential"

    def __init__(self, sources: Sequence[ImageSource], dataset, net_name: str, epochs: int, lr: float,
                 seeds: Sequence[int], **kw):  # fmt: skip
        self.trainers = [SeedTrainer(src, dataset, net_name, epochs, lr, sd, **kw)
                         for src, sd in zip(sources, seeds, strict=True)]  # fmt: skip

    def epoch(self) -> None:
        for t in self.trainers:
            t.epoch()

    def test(self, test_batch: int = 1000) -> list[float]:
        return [t.test(test_batch)[0] for t in self.trainers]


def _run(trainer, epochs: int, test_batch: int) -> tuple[list[float], float, float]:
    """Train ``epochs`` epochs and test: (accuracies, train seconds, test seconds)."""
    t0 = time.perf_counter()
    for _ in range(epochs):
        trainer.epoch()
    t1 = time.perf_counter()
    accs = trainer.test(test_batch)
    return accs, t1 - t0, time.perf_counter() - t1


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
    trainer = SeedTrainer(source, dataset, net_name, epochs, lr, seed, batch, momentum, weight_decay, dsa_strategy,
                          std, net_params)  # fmt: skip
    (acc,), train_s, test_s = _run(trainer, epochs, test_batch)
    return {"acc": acc, "train_s": train_s, "test_s": test_s, "seed": seed, "net": net_name, "path": "sequential"}


# ------------------------------------------------------------------------------------------------ grouped seeds


class NotStackable(Exception):
    """The networks cannot be stacked into one grouped network (an unknown layer, or the check failed)."""


class GroupedLinear(nn.Module):
    """S independent ``nn.Linear(D, O)`` layers on (B, S * D) inputs laid out seed-major -> (B, S * O)."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.groups = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]).clone())  # (S, O, D)
        bias = [m.bias for m in layers]
        self.bias = nn.Parameter(torch.stack([b.detach() for b in bias]).clone()) if bias[0] is not None else None

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = x.reshape(b, self.groups, -1)  # (B, S, D)
        y = torch.einsum("bsd,sod->bso", x, self.weight)  # (B, S, O)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(b, -1)


# Leaves without parameters that act per channel or per element, so they work unchanged on the
# channel-concatenated layout (B, S * C, H, W) (and on (B, S * D) after a flatten).
_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.GELU, nn.Tanh, nn.Identity, nn.AvgPool2d, nn.MaxPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout)  # fmt: skip


def _cat(mods: Sequence[nn.Module], name: str) -> Tensor:
    return torch.cat([getattr(m, name).detach() for m in mods])


def _stack_leaf(peers: Sequence[nn.Module]) -> nn.Module | None:
    """The grouped replacement of one leaf layer of S networks, None when it can be kept as it is."""
    m, s = peers[0], len(peers)
    if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
        if m.padding_mode != "zeros":
            raise NotStackable(f"Conv2d padding_mode={m.padding_mode!r}")
        new = nn.Conv2d(m.in_channels * s, m.out_channels * s, m.kernel_size, m.stride, m.padding, m.dilation,
                        m.groups * s, m.bias is not None)  # fmt: skip
        with torch.no_grad():
            new.weight.copy_(_cat(peers, "weight"))  # (S * C_out, C_in / groups, k, k): seed-major blocks
            if m.bias is not None:
                new.bias.copy_(_cat(peers, "bias"))
        return new
    if isinstance(m, nn.GroupNorm):  # instance/layer/group norm: S times the groups over S times the channels
        new = nn.GroupNorm(m.num_groups * s, m.num_channels * s, m.eps, m.affine)
        if m.affine:
            with torch.no_grad():
                new.weight.copy_(_cat(peers, "weight"))
                new.bias.copy_(_cat(peers, "bias"))
        return new
    if isinstance(m, nn.BatchNorm2d) and type(m) is nn.BatchNorm2d:  # per-channel statistics: exact
        new = nn.BatchNorm2d(m.num_features * s, m.eps, m.momentum, m.affine, m.track_running_stats)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, key, None) is not None:
                    getattr(new, key).copy_(_cat(peers, key))
        return new
    if isinstance(m, nn.Linear) and type(m) is nn.Linear:
        return GroupedLinear(peers)
    if isinstance(m, _PASS_THROUGH):
        if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
            raise NotStackable("Flatten other than flatten(1)")
        return None
    raise NotStackable(f"no grouped form for {type(m).__name__}")


def stack_nets(nets: Sequence[nn.Module], probe: Tensor | None = None) -> nn.Module:
    """One network computing S networks of the same architecture side by side.

    Input (B, S * C, H, W): seed k's images in channels ``[k*C, (k+1)*C)``; output (B, S * K) logits, seed
    k's in columns ``[k*K, (k+1)*K)``. Convolutions become S-grouped convolutions, norms get S times the
    groups/channels, linear layers become :class:`GroupedLinear`; per-channel and elementwise layers are
    kept. Parameters are copies, so SGD on the grouped network is SGD on each network (weight decay and
    momentum act elementwise). ``probe`` (b, C, H, W) checks the result against the separate networks
    (eval mode); any mismatch or unknown layer raises :class:`NotStackable`.
    """
    if len(nets) < 1:
        raise NotStackable("no networks")
    base = copy.deepcopy(nets[0])
    tables = [dict(n.named_modules()) for n in nets]
    covered: set[str] = set()
    for name, m in list(base.named_modules()):
        if name == "" or any(True for _ in m.children()):
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
                raise NotStackable(f"{type(m).__name__} {name!r} holds its own parameters")
            continue
        peers = [t[name] for t in tables]
        if any(type(p) is not type(m) for p in peers):
            raise NotStackable(f"networks differ at {name!r}")
        new = _stack_leaf(peers)
        if new is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(base.get_submodule(parent_name) if parent_name else base, attr, new)
        covered.add(name)
    for n, _ in base.named_parameters():
        if n.rpartition(".")[0] not in covered:
            raise NotStackable(f"parameter {n!r} is not in a stackable layer")
    if probe is not None:
        _check_stacked(base, nets, probe)
    return base


@torch.no_grad()
def _check_stacked(grouped: nn.Module, nets: Sequence[nn.Module], probe: Tensor) -> None:
    flags = [m.training for m in nets]
    grouped.eval()
    for m in nets:
        m.eval()
    try:
        s = len(nets)
        ref = torch.cat([m(probe) for m in nets], 1)  # (b, S * K)
        out = grouped(probe.repeat(1, s, 1, 1))
    except RuntimeError as e:
        raise NotStackable(f"grouped forward failed: {e}") from e
    finally:
        for m, f in zip(nets, flags, strict=True):
            m.train(f)
    if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * (1 + ref.abs().max().item())):
        raise NotStackable("grouped outputs differ from the separate networks")


def _init_nets(net_name: str, info, seeds: Sequence[int], net_params: dict | None) -> list[nn.Module]:
    nets = []
    for s in seeds:
        torch.manual_seed(s)  # the same initialisation as train_from_scratch(seed=s)
        nets.append(create_net(net_name, info.channels, info.num_classes, info.im_size, **(net_params or {})))
    return nets


@torch.no_grad()
def _grouped_test_accuracy(net, s: int, k: int, images: Tensor, labels: Tensor, batch: int, std: bool) -> list[float]:
    """Each seed's test accuracy. Standardization uses the same ``batch``-sized chunks as :func:`test_accuracy`
    (it is per batch); the forward passes go in chunks of ``batch // s`` images, S copies each."""
    net.eval()
    correct = torch.zeros(s, dtype=torch.long)
    sub = max(1, batch // s)
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        x = standardize(x) if std else x
        y = labels[i : i + batch]
        for j in range(0, len(x), sub):
            pred = net(x[j : j + sub].repeat(1, s, 1, 1)).view(-1, s, k).argmax(2)  # (b, S)
            correct += (pred == y[j : j + sub, None]).sum(0).cpu()
    return [c / max(1, len(images)) for c in correct.tolist()]


class GroupedTrainer:
    """S networks of one architecture trained as one grouped network (:func:`stack_nets`).

    ``sources[k]`` feeds seed ``seeds[k]`` (all sources must yield the same number of images). Per seed the
    same generator draws happen in the same order as :class:`SeedTrainer` with that seed: the source, the
    epoch's permutation, then one DSA draw per batch. Raises :class:`NotStackable` when the architecture has
    no grouped form (before any training).
    """

    path = "grouped"

    def __init__(self, sources: Sequence[ImageSource], dataset, net_name: str, epochs: int, lr: float,
                 seeds: Sequence[int], batch: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
                 dsa_strategy: str = "", std: bool = False, net_params: dict | None = None):  # fmt: skip
        info = dataset.info
        self.sources, self.dataset, self.batch, self.dsa, self.std = list(sources), dataset, batch, dsa_strategy, std
        self.s, self.k = len(seeds), info.num_classes
        nets = _init_nets(net_name, info, seeds, net_params)
        self.gens = [torch.Generator().manual_seed(sd) for sd in seeds]
        probe = torch.randn(2, info.channels, *info.im_size, generator=torch.Generator().manual_seed(0))
        self.net = stack_nets(nets, probe).to(dataset.images_test.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=[epochs // 2], gamma=0.1)

    def epoch(self) -> None:
        net, s, k, im_size = self.net, self.s, self.k, self.dataset.info.im_size
        net.train()
        with torch.no_grad():
            data = [src(g) for src, g in zip(self.sources, self.gens, strict=True)]
        n = len(data[0][0])
        if any(len(x) != n for x, _ in data):
            raise NotStackable("the seeds' training sets differ in size")
        orders = [torch.randperm(n, generator=g).to(data[0][0].device) for g in self.gens]
        for i in range(0, n, self.batch):
            xs, ys = [], []
            for (images, labels), order, g in zip(data, orders, self.gens, strict=True):
                idx = order[i : i + self.batch]
                xs.append(augment_batch(images[idx], self.dsa, g, im_size, self.std))
                ys.append(labels[idx])
            b = len(ys[0])
            logits = net(torch.cat(xs, 1)).view(b, s, k)  # (b, S, K)
            # sum over seeds of each seed's mean loss: each seed's gradient is its own
            loss = F.cross_entropy(logits.permute(0, 2, 1), torch.stack(ys, 1), reduction="none").mean(0).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sched.step()

    def test(self, test_batch: int = 1000) -> list[float]:
        ds = self.dataset
        return _grouped_test_accuracy(self.net, self.s, self.k, ds.images_test, ds.labels_test, test_batch, self.std)


def train_seeds_grouped(
    sources: Sequence[ImageSource],
    dataset,
    net_name: str,
    epochs: int,
    lr: float,
    seeds: Sequence[int],
    batch: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa_strategy: str = "",
    std: bool = False,
    test_batch: int = 1000,
    net_params: dict | None = None,
) -> list[dict]:
    """Train ``len(seeds)`` networks at once with a :class:`GroupedTrainer`; one record per seed, whose
    ``train_s``/``test_s`` are the group's times divided by S (``group_train_s``/``group_test_s``: the whole)."""
    trainer = GroupedTrainer(sources, dataset, net_name, epochs, lr, seeds, batch, momentum, weight_decay,
                             dsa_strategy, std, net_params)  # fmt: skip
    accs, train_s, test_s = _run(trainer, epochs, test_batch)
    s = len(seeds)
    shared = {"net": net_name, "path": "grouped", "group_size": s, "group_train_s": train_s, "group_test_s": test_s}
    return [{"acc": a, "train_s": train_s / s, "test_s": test_s / s, "seed": sd, **shared}
            for a, sd in zip(accs, seeds, strict=True)]  # fmt: skip


def grouped_by_default(device: torch.device | str) -> bool:
    """Whether ``batched=None`` trains seeds as one grouped network on ``device`` (CUDA yes, CPU no)."""
    return torch.device(device).type == "cuda"


def train_seeds(
    sources: Sequence[ImageSource],
    dataset,
    net_name: str,
    epochs: int,
    lr: float,
    seeds: Sequence[int],
    batch: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dsa_strategy: str = "",
    std: bool = False,
    test_batch: int = 1000,
    net_params: dict | None = None,
    batched: bool | None = None,
) -> list[dict]:
    """Train one network per seed (``sources[k]`` feeds ``seeds[k]``): grouped when ``batched``, else one at a
    time. ``batched=None`` groups on CUDA only: on CPU the grouped network measured 0.7-1.3x the speed of the
    sequential loop (``scripts/bench_eval_batched.py``), since CPU convolutions are compute-bound and grouped
    kernels are no faster than S dense ones. Each result records its ``path``; a fallback from grouped to
    sequential records why (``fallback``)."""
    if batched is None:
        batched = grouped_by_default(dataset.images_test.device)
    args = dict(dataset=dataset, net_name=net_name, epochs=epochs, lr=lr, batch=batch, momentum=momentum,
                weight_decay=weight_decay, dsa_strategy=dsa_strategy, std=std, test_batch=test_batch,
                net_params=net_params)  # fmt: skip
    reason = None
    if batched and len(seeds) > 1:
        try:
            return train_seeds_grouped(sources, seeds=seeds, **args)
        except NotStackable as e:
            reason = str(e)
    out = [train_from_scratch(src, seed=sd, **args) for src, sd in zip(sources, seeds, strict=True)]
    if reason:
        for r in out:
            r["fallback"] = reason
    return out


# ------------------------------------------------------------------------------------------------ in memory


def summarize(accs: list[float]) -> dict:
    mean = statistics.fmean(accs) if accs else float("nan")
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(accs), "per_seed": accs}


def protocol_of(cfg, lr: float | None, dsa_strategy: str, test_images: int | None = None) -> dict:
    """The recorded :class:`EvalProtocol` of EvalConfig ``cfg`` (``lr``: the set's learned lr, if any)."""
    return EvalProtocol.from_config(cfg, dsa_strategy, test_images).record(lr)


def _train_protocol(sources, dataset, protocol: dict, name: str, seeds: Sequence[int], batched, test_batch=1000):
    return train_seeds(sources, dataset, name, protocol["epochs"], protocol["lr"], seeds, protocol["batch"],
                       protocol["momentum"], protocol["weight_decay"], protocol["dsa"], protocol["standardize"],
                       test_batch, batched=batched)  # fmt: skip


def _net_summary(runs: list[dict]) -> dict:
    paths = sorted({r.get("path", "sequential") for r in runs})
    out = {
        **summarize([r["acc"] for r in runs]),
        "seeds": [r["seed"] for r in runs],
        "train_s": statistics.median(r["train_s"] for r in runs) if runs else None,
        "test_s": statistics.median(r["test_s"] for r in runs) if runs else None,
        "path": paths[0] if len(paths) == 1 else "mixed",
    }
    fallbacks = sorted({r["fallback"] for r in runs if r.get("fallback")})
    if fallbacks:
        out["fallback"] = "; ".join(fallbacks)
    return out


def evaluate_source(
    source: ImageSource, dataset, protocol: dict, nets: Iterable[str], seeds: int, seed: int = 0,
    batched: bool | None = None, test_batch: int = 1000,
) -> dict:  # fmt: skip
    """Train ``seeds`` fresh networks per architecture; mean +- std of final test accuracy."""
    per_net = {}
    for name in nets:
        seed_list = [seed + k for k in range(seeds)]
        runs = _train_protocol([source] * seeds, dataset, protocol, name, seed_list, batched, test_batch)
        per_net[name] = _net_summary(runs)
    return per_net


def evaluate_synset(
    synset, dataset, cfg, nets=("convnet",), seeds=3, lr=None, dsa_strategy="", seed=0, batched: bool | None = None
) -> dict:
    """Evaluate a synset under ``cfg`` (an EvalConfig). Returns per-net results, protocol and storage."""
    lr = lr if lr is not None else synset.extra.get("syn_lr")
    dataset = dataset.evaluated_on(cfg.split)
    protocol = protocol_of(cfg, lr, dsa_strategy, len(dataset.labels_test))
    device = dataset.images_test.device
    synset = synset.to(device)
    source = _synset_source(synset, cfg.pairing)
    with torch.enable_grad():
        per_net = evaluate_source(source, dataset, protocol, nets, seeds, seed, batched, cfg.test_batch)
    return _result(per_net, protocol, synset.storage())


def _synset_source(synset, pairing: str) -> ImageSource:
    def source(g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = synset.materialize(g, pairing=pairing)
        return x.detach(), y

    return source


def _fixed_source(images: Tensor, labels: Tensor) -> ImageSource:
    return lambda g: (images, labels)


def random_real_baseline(
    dataset, ipc: int, cfg, nets=("convnet",), seeds=3, dsa_strategy="", seed=0, batched: bool | None = None
) -> dict:
    """The random-real-subset baseline: ``ipc`` real images per class (a new draw per network seed)."""
    dataset = dataset.evaluated_on(cfg.split)
    protocol = protocol_of(cfg, None, dsa_strategy, len(dataset.labels_test))
    seed_list = [seed + k for k in range(seeds)]
    sources = [_fixed_source(*dataset.subset_random(ipc, torch.Generator().manual_seed(s))) for s in seed_list]
    per_net = {name: _net_summary(_train_protocol(sources, dataset, protocol, name, seed_list, batched, cfg.test_batch))
               for name in nets}  # fmt: skip
    return _result(per_net, protocol, random_real_storage(dataset.info, ipc))


def random_real_storage(info, ipc: int) -> dict:
    c, h, w = info.channels, *info.im_size
    return {
        "kind": "random_real",
        "n_bases": ipc,
        "images_per_class": ipc,
        "floats_total": ipc * info.num_classes * c * h * w,
        "ipc_equivalent": float(ipc),
    }


def _result(per_net: dict, protocol: dict, storage: dict) -> dict:
    summary = ", ".join(f"{n} {100 * r['mean']:.2f}+-{100 * r['std']:.2f}" for n, r in per_net.items())
    return {"nets": per_net, "protocol": protocol, "storage": storage, "summary": summary}


# ------------------------------------------------------------------------------------------------ cells


def eval_cell_task(job: dict) -> list[dict]:
    """Train the networks of one cell (one source, one architecture, some seeds) where the executor sent it.

    ``job`` is plain data: ``data`` (load_dataset arguments), ``device``, ``source`` (``{"kind": "synset",
    "file": bytes, "pairing": ...}`` or ``{"kind": "random_real", "ipc": k}``), ``net``, ``seeds``,
    ``protocol``, ``batched``, ``test_batch``. Returns one record per seed. Top-level so executors can pickle it.
    """
    from haba_core.data import load_dataset

    d = job["data"]
    dataset = load_dataset(d["name"], root=d["root"], zca=d["zca"], train_limit=d["train_limit"],
                           test_limit=d["test_limit"], zca_variant=d["zca_variant"], val_per_class=d["val_per_class"],
                           val_seed=d["val_seed"], **d["options"])  # fmt: skip
    dataset = dataset.evaluated_on(job["protocol"].get("split", "test")).to(resolve_device(job["device"]))
    src, seeds = job["source"], list(job["seeds"])
    if src["kind"] == "synset":
        synset = _synset_from_bytes(src["file"], dataset.images_test.device)
        sources = [_synset_source(synset, src["pairing"])] * len(seeds)
    else:
        sources = [_fixed_source(*dataset.subset_random(src["ipc"], torch.Generator().manual_seed(s))) for s in seeds]
    with torch.enable_grad():
        return _train_protocol(sources, dataset, job["protocol"], job["net"], seeds, job["batched"], job["test_batch"])


def _synset_from_bytes(data: bytes, device):
    from haba_core.synsets import load_synset

    with tempfile.TemporaryDirectory(prefix="haba_eval_") as tmp:
        path = Path(tmp) / "synset.safetensors"
        path.write_bytes(data)
        return load_synset(path, device)


def cell_path(cells_dir: Path, net: str, seed: int) -> Path:
    return Path(cells_dir) / f"{net}_s{seed}.json"


def _tag(name: str, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def evaluate_run(
    run: str | Path,
    cfg,
    ecfg,
    synset_path: str | Path,
    *,
    baseline: str | None = None,
    executor=None,
    retries: int = 1,
    batched: bool | None = None,
    device: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict:
    """The cross-architecture matrix of a run folder: ``ecfg.nets`` x ``ecfg.seeds`` on the synset at
    ``synset_path`` (and on a random real subset at the same storage when ``baseline="random"``).

    ``cfg`` is the run's RunConfig (data, DSA strategy, device), ``ecfg`` the EvalConfig to use. Finished
    cells already in ``RUN/eval/cells/<tag>/`` (same synset file, data and protocol) are reused, never
    recomputed; new ones are written as they finish. Writes ``RUN/evaluation.json`` (the structure of
    :func:`evaluate_synset` under ``"synset"``/``"random_real"``, plus ``failed``, ``complete``, ``executor``,
    ``wall_s``, ...), a copy under ``RUN/eval/eval_<time>.json``, and ``RUN/eval/matrix.csv``. Returns the
    evaluation dict; ``result["complete"]`` is False when some task failed after its retries.
    """
    from haba_core import io
    from haba_core.data import dataset_from_config
    from haba_core.errors import ConfigError
    from haba_core.executors import InlineExecutor, Task
    from haba_core.synsets import load_synset

    run, synset_path = Path(run), Path(synset_path)
    t_start = time.time()
    say = log or (lambda _m: None)
    d = cfg.data
    data = {"name": d.name, "root": str(Path(d.root).expanduser().resolve()), "zca": d.zca,
            "zca_variant": d.zca_variant, "train_limit": d.train_limit, "test_limit": d.test_limit,
            "val_per_class": d.val_per_class, "val_seed": d.val_seed, "options": dict(d.options)}  # fmt: skip
    device = device or cfg.device
    dsa = cfg.dsa_strategy if ecfg.dsa else ""
    nets = list(ecfg.nets)
    seeds = [seed + k for k in range(ecfg.seeds)]
    synset_bytes = synset_path.read_bytes()
    synset = load_synset(synset_path)
    info = synset.info
    data_identity = {k: v for k, v in data.items() if k != "root"}

    # fail early, in the driver, when the data cannot be loaded (not once per task in the workers)
    ds = dataset_from_config(d, root=data["root"]).evaluated_on(ecfg.split)
    test_images = len(ds.labels_test)
    del ds
    sources: dict[str, dict] = {}
    protocol = protocol_of(ecfg, synset.extra.get("syn_lr"), dsa, test_images)
    sources["synset"] = {
        "protocol": protocol,
        "storage": synset.storage(),
        "spec": {"kind": "synset", "file": synset_bytes, "pairing": ecfg.pairing},
        "identity": {"synset_sha256": hashlib.sha256(synset_bytes).hexdigest(), "pairing": ecfg.pairing},
    }
    if baseline == "random":
        ipc = max(1, math.floor(synset.storage()["ipc_equivalent"] + 1e-9))
        sources["random_real"] = {
            "protocol": protocol_of(ecfg, None, dsa, test_images),  # the same protocol, without a learned lr
            "storage": random_real_storage(info, ipc),
            "spec": {"kind": "random_real", "ipc": ipc},
            "identity": {"random_real_ipc": ipc},
        }
    elif baseline:
        raise ConfigError(f"Unknown baseline {baseline!r}. Valid: random.")
    for net in nets:  # an architecture that cannot take these images fails here, not in every task
        create_net(net, info.channels, info.num_classes, info.im_size)
    grouped = batched if batched is not None else grouped_by_default(resolve_device(device))
    tasks: list[Task] = []
    meta: dict[str, tuple[str, str, list[int]]] = {}
    reused = 0
    for name, src in sources.items():
        src["tag"] = _tag(name, {**src["identity"], "protocol": src["protocol"], "data": data_identity})
        src["dir"] = run / "eval" / "cells" / src["tag"]
        spec_file = src["dir"] / "spec.json"
        if not spec_file.exists():
            io.write_json(spec_file, {"source": name, **src["identity"], "protocol": src["protocol"],
                                      "storage": src["storage"], "data": data_identity,
                                      "synset_file": str(synset_path)})  # fmt: skip
        for net in nets:
            todo = [s for s in seeds if not cell_path(src["dir"], net, s).exists()]
            reused += len(seeds) - len(todo)
            groups = [todo] if grouped else [[s] for s in todo]  # per-seed tasks spread over workers
            for group in (g for g in groups if g):
                tid = f"{name}/{net}/s{','.join(map(str, group))}"
                job = {"data": data, "device": device, "source": src["spec"], "net": net, "seeds": group,
                       "protocol": src["protocol"], "batched": grouped, "test_batch": ecfg.test_batch}  # fmt: skip
                tasks.append(Task(tid, (job,)))
                meta[tid] = (name, net, group)
    total = len(sources) * len(nets) * len(seeds)
    say(f"evaluation: {total} cells ({len(nets)} nets x {len(seeds)} seeds x {len(sources)} sources), "
        f"{reused} already done, {len(tasks)} tasks to run")  # fmt: skip

    def on_result(r) -> None:
        name, net, group = meta[r.id]
        if not r.ok:
            say(f"FAILED {r.id} after {r.attempts} attempt(s): {(r.error or '').splitlines()[0]}")
            return
        for rec in r.value:
            cell = {**rec, "source": name, "tag": sources[name]["tag"], "attempts": r.attempts, "worker": r.worker,
                    "task_s": round(r.seconds, 3), "finished_at": time.time()}  # fmt: skip
            io.write_json(cell_path(sources[name]["dir"], net, rec["seed"]), cell)
        accs = " ".join(f"{100 * rec['acc']:.2f}" for rec in r.value)
        say(f"done {r.id}: {accs} ({r.value[0].get('path')}, {r.seconds:.1f} s on {r.worker})")

    executor = executor or InlineExecutor()
    results = executor.map(eval_cell_task, tasks, retries=retries, on_result=on_result, log=say) if tasks else []
    failed = [{"task": r.id, "source": meta[r.id][0], "net": meta[r.id][1], "seeds": meta[r.id][2],
               "attempts": r.attempts, "error": r.error} for r in results if not r.ok]  # fmt: skip

    out: dict[str, Any] = {"synset_file": str(synset_path.relative_to(run) if synset_path.is_relative_to(run)
                                              else synset_path), "started_at": t_start}  # fmt: skip
    for name, src in sources.items():
        per_net = {}
        for net in nets:
            cells = [io.read_json(p) for s in seeds if (p := cell_path(src["dir"], net, s)).exists()]
            if cells:
                per_net[net] = _net_summary(cells)
                # compute seconds spent on this net's cells (a grouped task's time is shared by its seeds)
                per_net[net]["compute_s"] = round(sum(c.get("task_s", 0.0) / c.get("group_size", 1) for c in cells), 3)
                missing = [s for s in seeds if s not in per_net[net]["seeds"]]
                if missing:
                    per_net[net]["missing_seeds"] = missing
        out[name] = {**_result(per_net, src["protocol"], src["storage"]), "cells": str(src["dir"].relative_to(run))}
    out.update({
        "architectures": nets,
        "seeds": seeds,
        "batched": grouped,
        "executor": executor.describe(),
        "retries": retries,
        "computed_tasks": len(tasks),
        "reused_cells": reused,
        "failed": failed,
        "complete": not failed,
        "wall_s": time.time() - t_start,  # this invocation (reused cells cost nothing)
        "compute_s": round(sum(r.get("compute_s", 0.0) for n in sources for r in out[n]["nets"].values()), 3),
        "matrix_csv": "eval/matrix.csv",
    })  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t_start))
    io.write_json(run / "eval" / f"eval_{stamp}.json", out)
    io.write_json(run / "evaluation.json", out)
    io.atomic_write_bytes(run / "eval" / "matrix.csv", matrix_csv(out).encode())
    return out


def matrix_rows(evaluation: dict) -> tuple[list[str], list[dict]]:
    """The accuracy matrix of an evaluation dict: (net names, one row per source with 'mean +- std' in %)."""
    nets: list[str] = list(evaluation.get("architectures") or [])
    rows = []
    for name in ("synset", "random_real"):
        res = evaluation.get(name)
        if not isinstance(res, dict):
            continue
        for n in res.get("nets", {}):
            if n not in nets:
                nets.append(n)
        st = res.get("storage") or {}
        row = {"row": name, "kind": st.get("kind"), "floats_total": st.get("floats_total"),
               "ipc_equivalent": round(float(st.get("ipc_equivalent") or 0.0), 4)}  # fmt: skip
        for n in nets:
            r = res.get("nets", {}).get(n)
            row[n] = f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}" if r else ""
        rows.append(row)
    return nets, rows


def matrix_csv(evaluation: dict) -> str:
    """``matrix_rows`` as CSV: row, kind, floats_total, ipc_equivalent, then one column per net."""
    nets, rows = matrix_rows(evaluation)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "kind", "floats_total", "ipc_equivalent", *nets], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def matrix_markdown(evaluation: dict) -> str:
    """``matrix_rows`` as a markdown table (accuracies in %, mean +- std over seeds)."""
    nets, rows = matrix_rows(evaluation)
    head = ["row", "storage (IPC-eq.)", *nets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], f"{r['ipc_equivalent']:.3f} ({r['floats_total']:,} floats)", *(r[n] for n in nets)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    protocols = distinct_protocols((evaluation.get(n) or {}).get("protocol") for n in ("synset", "random_real")
                                   if isinstance(evaluation.get(n), dict))  # fmt: skip
    if len(protocols) == 1:
        lines.append(f"\nEvery row: evaluation protocol {protocols[0]}.")
    elif protocols:
        lines.append(f"\n**Rows evaluated under different protocols, not comparable: {'; '.join(protocols)}.**")
    return "\n".join(lines)
