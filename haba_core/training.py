"""Training a network on images: the one epoch loop and test-accuracy function that evaluation, expert
training and DC's inner loop share, and evaluation's reference trainer of a fresh network (:class:`SeedTrainer`,
:func:`train_from_scratch`; several seeds as one grouped network are ``haba_core.grouped``).

Draw order on the epoch's generator (so runs are reproducible and resumable): the permutation, then, per
batch, one DSA draw per image. A batch is standardized *before* it is augmented (the reference order).

Speed: ``precision="bf16"`` runs the forward pass and the loss under bfloat16 autocast (weights, optimizer and
gradients stay float32); it changes the numbers, so it is part of the evaluation protocol. ``compile`` wraps
the network in ``torch.compile`` (same arithmetic up to fusion order, so not part of the protocol); a new
network of the same architecture reuses the compiled graph, and inductor's on-disk cache serves later
processes. ``bench/speed.py`` measures both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haba_core.augment import apply_dsa, sample_dsa_params
from haba_core.bf16 import ensure_bf16_arithmetic
from haba_core.nets import create_net
from haba_core.protocol import EvalProtocol

# what evaluation trains on: generator -> (images, labels), called once per epoch (HaBa draws new pairings)
ImageSource = Callable[[torch.Generator], tuple[Tensor, Tensor]]

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device | str):
    """The forward-pass context for ``precision``: bfloat16 autocast for ``"bf16"``, nothing for ``"fp32"``. On a
    CPU without native bf16, the thread's matrix products and convolutions of bf16 tensors are computed as a
    native one computes them, in float32 and rounded (``haba_core.bf16``), not by ATen's slow bf16 fallback."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        ensure_bf16_arithmetic(device)
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def compile_once(fn: Callable) -> Callable:
    """``fn(net, x)`` through one process-wide ``torch.compile`` with static shapes, built at the first call.
    The network is an argument, so its weights are graph inputs: every network of one architecture (a fresh
    one each distillation iteration) shares the compiled graph. Single backward only: autograd cannot take a
    second derivative through a compiled graph, so create_graph passes stay eager."""
    built: list[Callable] = []

    @functools.wraps(fn)
    def call(net: nn.Module, x: Tensor) -> Tensor:
        if not built:
            built.append(torch.compile(fn, dynamic=False))
        return built[0](net, x)

    return call


def compiled(net: nn.Module) -> nn.Module:
    """``net`` under ``torch.compile`` with static shapes (a training set's last short batch and the test
    batches compile once each); parameters, ``train()``/``eval()`` and ``state_dict`` still reach ``net``."""
    return torch.compile(net, dynamic=False)


@dataclass(frozen=True)
class Recipe(EvalProtocol):
    """How each evaluation network is trained and tested: SGD with momentum and weight decay, lr x0.1 at half
    the epochs, per-batch standardization then DSA. It is an :class:`~haba_core.protocol.EvalProtocol` with its lr
    resolved (the fixed one, else the set's learned one; None trains at ``DEFAULT_LR``) plus the execution choices
    that leave the numbers alone; every trainer takes one instead of a dozen loose arguments, and a worker is sent
    ``dataclasses.asdict(recipe)`` and trains with ``Recipe(**payload)``."""

    test_batch: int = 1000  # test images per forward batch; with standardization the protocol's batch (from_protocol)
    net_params: dict = field(default_factory=dict)
    compile: bool = False  # torch.compile the network (same arithmetic, faster after a one-off compile)

    @classmethod
    def from_protocol(cls, protocol: Mapping[str, Any], test_batch: int = 1000, compile: bool = False) -> Recipe:
        """The recipe of a recorded protocol (``EvalProtocol.record(lr)``: its lr already resolved), its fields
        as recorded (records written before a field existed take its default: ``precision`` float32). With
        standardization the test batch is the protocol's ``standardize_test_batch`` (it fixes the statistics),
        else ``test_batch``."""
        known = {f.name for f in dataclasses.fields(EvalProtocol)}
        given = {k: v for k, v in protocol.items() if k in known}
        if given.get("standardize") and given.get("standardize_test_batch"):
            test_batch = given["standardize_test_batch"]
        return cls(**{**given, "dsa": given.get("dsa") or ""}, test_batch=test_batch, compile=compile)

    def optimizer(self, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD(params, lr=self.lr_for(None), momentum=self.momentum, weight_decay=self.weight_decay)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[self.epochs // 2], gamma=0.1)


def standardize(x: Tensor) -> Tensor:
    """HaBa's per-batch standardization: the whole batch to zero mean and unit std."""
    return (x - x.mean()) / x.std().clamp_min(1e-8)


def augment_batch(x: Tensor, dsa_strategy: str, g: torch.Generator, im_size, std: bool = False) -> Tensor:
    """One training batch: optional standardization, *then* its DSA draw (from ``g``, one per image), in the
    reference code's order (HaBa's evaluation standardizes the batch and augments the result)."""
    x = standardize(x) if std else x
    if dsa_strategy:
        x = apply_dsa(x, sample_dsa_params(dsa_strategy, len(x), g, x.device, tuple(im_size)))
    return x


# Test images per forward pass on CPU. A network in eval mode maps each image on its own, so this is an
# execution choice (with standardization, the protocol's ``standardize_test_batch`` fixes the statistics).
# Small chunks stay in cache (the first convolution of a 1,000-image batch writes 260 MB of feature maps):
# ConvNet-128's test pass on 10,000 3x32x32 images, bf16 compiled, one thread, 5.8 s in chunks of 32 vs 7.7 s
# in batches of 1,000 (bench/speed.py, bench/results/speed_eval.md).
CPU_TEST_CHUNK = 32
TEST_CHUNK_ENV = "HABA_TEST_CHUNK"  # overrides it on every device (bench/speed.py times the old 1,000 with it)


def test_chunk(device: torch.device | str, batch: int) -> int:
    """Images per forward pass in :func:`test_accuracy`: ``$HABA_TEST_CHUNK`` if set, else
    :data:`CPU_TEST_CHUNK` on CPU and the whole batch elsewhere."""
    value = os.environ.get(TEST_CHUNK_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{TEST_CHUNK_ENV} must be a positive integer (images per forward pass), not {value!r}")
        return min(batch, int(value))
    return min(batch, CPU_TEST_CHUNK) if torch.device(device).type == "cpu" else batch


@torch.no_grad()
def test_accuracy(
    net: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000, std: bool = False, precision: str = "fp32"
) -> float:
    """Top-1 accuracy of ``net`` (in eval mode; its previous mode is restored) on ``images``, in test batches of
    ``batch`` (each standardized on its own when ``std``), each run through the network in chunks of
    :func:`test_chunk` images (same arithmetic: images do not interact in eval mode)."""
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        x = standardize(x) if std else x
        with autocast(precision, x.device):
            logits = torch.cat([net(c) for c in x.split(test_chunk(x.device, len(x)))])
        correct += int((logits.argmax(1) == labels[i : i + batch]).sum())
    net.train(was)
    return correct / max(1, len(images))


def train_epoch(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    batch: int,
    generator: torch.Generator,
    dsa_strategy: str = "",
    std: bool = False,
    im_size=None,
    stats: bool = False,
    precision: str = "fp32",
) -> tuple[int, float]:
    """One epoch of SGD with cross-entropy over ``images`` in a random order from ``generator``, each batch
    standardized (``std``) and augmented (``dsa_strategy``, one draw per image), the forward pass under
    ``precision`` (:func:`autocast`). With ``stats``, returns
    (correct, summed loss) over the epoch's batches as they were seen (a device sync per batch), else (0, 0.0)."""
    net.train()
    im_size = tuple(im_size or images.shape[-2:])
    order = torch.randperm(len(images), generator=generator).to(images.device)
    correct, loss_sum = 0, 0.0
    for i in range(0, len(images), batch):
        idx = order[i : i + batch]
        x, y = augment_batch(images[idx], dsa_strategy, generator, im_size, std), labels[idx]
        with autocast(precision, x.device):
            logits = net(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if stats:
            correct += int((logits.detach().argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
    return correct, loss_sum


def run_trainer(trainer, epochs: int) -> tuple[list[float], float, float]:
    """Train ``epochs`` epochs and test: (accuracies, train seconds, test seconds)."""
    t0 = time.perf_counter()
    for _ in range(epochs):
        trainer.epoch()
    t1 = time.perf_counter()
    accs = trainer.test()
    return accs, t1 - t0, time.perf_counter() - t1


class SeedTrainer:
    """One fresh network trained on ``source`` with seed ``seed``: :meth:`epoch` runs one epoch, :meth:`test`
    measures the final accuracy. The reference path; :func:`train_from_scratch` runs it to the end.

    Draw order on the seed's generator, per epoch: ``source(g)`` (HaBa pairings), the permutation, then one
    DSA draw per batch. The initialisation comes from ``torch.manual_seed(seed)``.
    """

    path = "sequential"

    def __init__(self, source: ImageSource, dataset, net_name: str, recipe: Recipe, seed: int):
        info = dataset.info
        self.source, self.dataset, self.recipe = source, dataset, recipe
        torch.manual_seed(seed)
        self.g = torch.Generator().manual_seed(seed)
        self.net = create_net(net_name, info.channels, info.num_classes, info.im_size, **recipe.net_params)
        self.net = self.net.to(dataset.images_test.device)
        self.opt, self.sched = recipe.optimizer(self.net.parameters())
        if recipe.compile:
            self.net = compiled(self.net)

    def epoch(self) -> None:
        r = self.recipe
        with torch.no_grad():
            images, labels = self.source(self.g)
        train_epoch(
            self.net,
            self.opt,
            images,
            labels,
            r.batch,
            self.g,
            r.dsa,
            r.standardize,
            self.dataset.info.im_size,
            precision=r.precision,
        )
        self.sched.step()

    def test(self) -> list[float]:
        ds, r = self.dataset, self.recipe
        return [test_accuracy(self.net, ds.images_test, ds.labels_test, r.test_batch, r.standardize, r.precision)]


class SequentialTrainer:
    """S :class:`SeedTrainer` one after another, with the interface of :class:`GroupedTrainer`."""

    path = "sequential"

    def __init__(self, sources: Sequence[ImageSource], dataset, net_name: str, recipe: Recipe, seeds: Sequence[int]):
        self.trainers = [
            SeedTrainer(src, dataset, net_name, recipe, sd) for src, sd in zip(sources, seeds, strict=True)
        ]

    def epoch(self) -> None:
        for t in self.trainers:
            t.epoch()

    def test(self) -> list[float]:
        return [t.test()[0] for t in self.trainers]


def train_from_scratch(source: ImageSource, dataset, net_name: str, recipe: Recipe, seed: int) -> dict:
    """Train one fresh ``net_name`` by ``recipe`` on ``source(generator) -> (images, labels)`` (called once per
    epoch, so HaBa draws fresh hallucinator pairings) and return its final test accuracy."""
    trainer = SeedTrainer(source, dataset, net_name, recipe, seed)
    (acc,), train_s, test_s = run_trainer(trainer, recipe.epochs)
    return {"acc": acc, "train_s": train_s, "test_s": test_s, "seed": seed, "net": net_name, "path": "sequential"}
