"""Several seeds of one architecture trained as one network: S networks stacked with S-grouped convolutions and
per-seed linear layers (:func:`stack_nets`), each seed with its own initialisation and generator, consuming
draws in the same order as the sequential path (``haba_core.training.SeedTrainer``), so both paths train the
same networks on the same batches up to floating-point summation order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haba_core.nets import create_net
from haba_core.training import ImageSource, Recipe, augment_batch, autocast, compiled, run_trainer, standardize


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
_PASS_THROUGH = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.GELU,
    nn.Tanh,
    nn.Identity,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
)


def _cat(mods: Sequence[nn.Module], name: str) -> Tensor:
    return torch.cat([getattr(m, name).detach() for m in mods])


def _stack_leaf(peers: Sequence[nn.Module]) -> nn.Module | None:
    """The grouped replacement of one leaf layer of S networks, None when it can be kept as it is."""
    m, s = peers[0], len(peers)
    if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
        if m.padding_mode != "zeros":
            raise NotStackable(f"Conv2d padding_mode={m.padding_mode!r}")
        new = nn.Conv2d(
            m.in_channels * s,
            m.out_channels * s,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups * s,
            m.bias is not None,
        )
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
def _grouped_test_accuracy(
    net, s: int, k: int, images: Tensor, labels: Tensor, batch: int, std: bool, precision: str = "fp32"
) -> list[float]:
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
            with autocast(precision, x.device):
                logits = net(x[j : j + sub].repeat(1, s, 1, 1))
            pred = logits.view(-1, s, k).argmax(2)  # (b, S)
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

    def __init__(self, sources: Sequence[ImageSource], dataset, net_name: str, recipe: Recipe, seeds: Sequence[int]):
        info = dataset.info
        self.sources, self.dataset, self.recipe = list(sources), dataset, recipe
        self.batch, self.dsa, self.std = recipe.batch, recipe.dsa, recipe.standardize
        self.s, self.k = len(seeds), info.num_classes
        nets = _init_nets(net_name, info, seeds, recipe.net_params)
        self.gens = [torch.Generator().manual_seed(sd) for sd in seeds]
        probe = torch.randn(2, info.channels, *info.im_size, generator=torch.Generator().manual_seed(0))
        self.net = stack_nets(nets, probe).to(dataset.images_test.device)
        self.opt, self.sched = recipe.optimizer(self.net.parameters())
        if recipe.compile:
            self.net = compiled(self.net)

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
            with autocast(self.recipe.precision, xs[0].device):
                logits = net(torch.cat(xs, 1)).view(b, s, k)  # (b, S, K)
                # sum over seeds of each seed's mean loss: each seed's gradient is its own
                loss = F.cross_entropy(logits.permute(0, 2, 1), torch.stack(ys, 1), reduction="none").mean(0).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sched.step()

    def test(self) -> list[float]:
        ds, batch = self.dataset, self.recipe.test_batch
        net, r = self.net, self.recipe
        return _grouped_test_accuracy(net, self.s, self.k, ds.images_test, ds.labels_test, batch, self.std, r.precision)


def train_seeds_grouped(
    sources: Sequence[ImageSource], dataset, net_name: str, recipe: Recipe, seeds: Sequence[int]
) -> list[dict]:
    """Train ``len(seeds)`` networks at once with a :class:`GroupedTrainer`; one record per seed, whose
    ``train_s``/``test_s`` are the group's times divided by S (``group_train_s``/``group_test_s``: the whole)."""
    trainer = GroupedTrainer(sources, dataset, net_name, recipe, seeds)
    accs, train_s, test_s = run_trainer(trainer, recipe.epochs)
    s = len(seeds)
    shared = {"net": net_name, "path": "grouped", "group_size": s, "group_train_s": train_s, "group_test_s": test_s}
    return [
        {"acc": a, "train_s": train_s / s, "test_s": test_s / s, "seed": sd, **shared}
        for a, sd in zip(accs, seeds, strict=True)
    ]


def grouped_by_default(device: torch.device | str) -> bool:
    """Whether ``batched=None`` trains seeds as one grouped network on ``device`` (CUDA yes, CPU no)."""
    return torch.device(device).type == "cuda"
