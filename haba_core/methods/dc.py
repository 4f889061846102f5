"""Gradient matching: DC (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021)
and DSA (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021).

Each outer iteration samples a fresh network and alternates, ``outer_loop`` times:

1. per class c, the gradient of the cross-entropy w.r.t. every network parameter on a real batch of c and on
   the synthetic images of c; the matching loss is ``sum_c sum_layers distance_wb(g_syn, g_real)``
   (Eq. 5-6 of DC) and yields it for one synthetic-set update (the engine applies it);
2. unless it was the last outer loop, ``inner_loop`` epochs of SGD on the (detached) synthetic set.

``distance_wb`` is the official layer-wise distance: the gradient of a conv weight (out, in, kh, kw) is
reshaped to (out, in*kh*kw), a linear weight (out, in) is taken as is, and the distance is the sum over
output units of ``1 - cos``. One-dimensional tensors (biases, norm scales and shifts) contribute **zero**
in the official code; we follow it (``match_bias=True`` counts them as one row each instead).

``dsa`` is DC whose matching applies one siamese DSA draw to the real and the synthetic batch of each
class (``Context.augment``: one transform for the whole batch, as the reference's seeded ``DiffAugment``),
and whose inner-loop training augments too, with an independent draw per image (the reference's unseeded
``DiffAugment``). ``dc`` uses no augmentation. The inner loop trains the network with plain SGD (``lr_net``,
no momentum), as the reference ``main.py``.
With HaBa, class c's synthetic images are its bases hallucinated: one random hallucinator per basis
(``syn_pairing="random"``, the default) or every basis x every hallucinator (``"all"``).

Speed: the step is dominated by the real batches (per class, a forward and backward pass of ``batch_real``
images for the parameter gradients). ``compile`` runs that pass through ``torch.compile`` (one graph per
process, shared by every iteration's fresh network; same arithmetic up to fusion order: one DSA step 1.43x
at the published settings, 1.30x at the CPU preset, ``python -m bench.speed --rows dc``). The synthetic pass needs a
second derivative, which a compiled graph cannot give, so it stays eager. ``precision="bf16"`` runs the real
and synthetic passes and the inner loop under bfloat16 autocast (the gradients are taken w.r.t. float32 weights
and the distance is float32): 1.3-1.5x a step at the CPU preset. Both default to float32: checked on the
validation split, bf16 lost more than one std of float32 with HaBa at IPC 1 for DC and for DSA (see ``precision``).

Loops by IPC (DC's ``get_loops``): 1 -> 1/1, 10 -> 10/50, 50 -> 50/10 (otherwise: the next listed IPC up,
and 50/10 beyond 50), keyed by the *storage budget* in whole images per class (``Context.budget_images``: the
budget rounded up, or the IPC-equivalent of what is stored when only ``n_bases`` is given), not by the number of
bases: at one budget every synset kind runs the same algorithm. ``outer_loop``/``inner_loop`` override them; the
engine records the resolved pair in the run's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haba_core.errors import ConfigError
from haba_core.methods.base import METHODS, PER_CLASS_REAL, Method, Step
from haba_core.options import Precision, option
from haba_core.training import autocast, compile_once, train_epoch

# DC's get_loops: ipc -> (outer_loop, inner_loop)
LOOPS_BY_IPC = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def _logits(net: nn.Module, x: Tensor) -> Tensor:
    return net(x)


compiled_logits = compile_once(_logits)


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for ``ipc`` images per class; in-between values take the next one up."""
    for k in sorted(LOOPS_BY_IPC):
        if ipc <= k:
            return LOOPS_BY_IPC[k]
    return LOOPS_BY_IPC[50]


def distance_wb(g_real: Tensor, g_syn: Tensor, match_bias: bool = False) -> Tensor:
    """Official DC layer distance between two gradients of one parameter: ``sum_rows (1 - cos)``.

    Rows are output units: conv (out, in, kh, kw) -> (out, in*kh*kw); linear (out, in) as is;
    (C, H, W) -> (C, H*W). 1-d tensors (biases, norm parameters) give 0, as the official code,
    unless ``match_bias`` (then they count as one row).
    """
    shape = g_real.shape
    if g_real.ndim == 1:
        if not match_bias:
            return g_real.new_zeros(())
        g_real, g_syn = g_real.view(1, -1), g_syn.view(1, -1)
    elif g_real.ndim != 2:
        g_real, g_syn = g_real.reshape(shape[0], -1), g_syn.reshape(shape[0], -1)
    dot = (g_real * g_syn).sum(-1)
    return (1 - dot / (g_real.norm(dim=-1) * g_syn.norm(dim=-1) + 1e-6)).sum()


def match_loss(g_syn: list[Tensor], g_real: list[Tensor], match_bias: bool = False) -> Tensor:
    """``sum_layers distance_wb``: the DC matching loss for one class."""
    return sum((distance_wb(r, s, match_bias) for r, s in zip(g_real, g_syn, strict=True)), g_syn[0].new_zeros(()))


@dataclass(frozen=True)
class DCConfig:
    lr_img: float = option(0.1, help="SGD lr of the bases", gt=0)
    # HaBa's hallucinators under DC: at lr_img they blow up (max |pixel| 3.6e4 after 100 iterations).
    # Chosen on the validation split (reference ConvNet, CPU DC preset, IPC 1 as 3 bases of 14x14 + 5
    # hallucinators, 500 held-out images per class, 3 nets; bench/results/val_search/dc_haba_ipc1_lr_hallucinators.md):
    # 1e-3 71.64%, 3e-4 71.36%, 1e-4 70.85%, 3e-5 70.27% (1e-3 and 3e-4 within noise of each other).
    lr_hallucinators: float = option(1e-3, help="SGD lr of HaBa's hallucinators", gt=0)
    momentum: float = option(0.5, help="SGD momentum of the synthetic set (official)", ge=0, lt=1)
    lr_net: float = option(0.01, help="SGD lr of the inner loop's network", gt=0)
    momentum_net: float = option(0.0, help="SGD momentum of the inner loop (the reference's is plain SGD)", ge=0, lt=1)
    batch_real: int = option(256, help="real images per class and matching step", ge=1, **PER_CLASS_REAL)
    batch_train: int = option(256, help="inner-loop mini-batch on the synthetic set", ge=1)
    outer_loop: int | None = option(
        None, help="matching steps per iteration; None: from the storage budget (DC's get_loops)", ge=1
    )
    inner_loop: int | None = option(
        None, help="inner-loop epochs between matching steps; None: from the storage budget (DC's get_loops)", ge=0
    )
    syn_pairing: Literal["random", "all"] = option(
        "random", help="haba: one random hallucinator per basis (random) or every pair (all)"
    )
    match_bias: bool = option(False, help="count 1-d tensors (biases, norm parameters); the official code does not")
    bn_size_pc: int = option(
        16, help="BatchNorm nets: real images per class for the statistics", ge=1, **PER_CLASS_REAL
    )
    compile: bool = option(False, help="torch.compile the real batches' pass (compiled once per process)")
    # the parameter gradients and the matching distance stay float32. float32 by default for DC and DSA: on the
    # validation split (Fashion-MNIST IPC 1, bench/results/val_search/{dc,dsa}_precision_ipc1_*.md), DC + HaBa in
    # bf16 fell 0.93 points below float32 over three distillation seeds, against a std of 0.89 across them, and
    # DSA + HaBa 0.38 against 0.30 (tests/test_precision_defaults.py recomputes the rule); pixels passed for both.
    # The earlier test-split check had passed DC (bench/results/distill_precision_dc_mtt.md). method.precision=bf16
    # opts in
    precision: Precision = option(
        "fp32", help="the forward passes and the inner loop under bf16 autocast: auto (where native), fp32, bf16"
    )


@METHODS.register("dc")
class DC(Method):
    """Gradient matching without augmentation in the matching step (``dsa`` adds siamese DSA)."""

    label = "DC"
    help = "gradient matching"

    Config = DCConfig
    augment_matching = False

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if self.augment_matching and not ctx.dsa_strategy:
            raise ConfigError("method dsa needs a DSA strategy (dsa_strategy=none was set); use method dc instead.")

    def loops(self) -> tuple[int, int]:
        """(outer_loop, inner_loop): the config's where set, else DC's ``get_loops`` of the storage budget."""
        outer, inner = loops_for_ipc(self.ctx.budget_images)
        return (self.cfg.outer_loop or outer, self.cfg.inner_loop if self.cfg.inner_loop is not None else inner)

    def resolved_params(self) -> dict:
        outer, inner = self.loops()
        return {"outer_loop": outer, "inner_loop": inner}

    def _augment(self, *batches: Tensor, generator) -> list[Tensor]:
        return self.ctx.augment(*batches, generator=generator) if self.augment_matching else list(batches)

    def class_images(self, synset, c: int, generator) -> tuple[Tensor, Tensor]:
        """Differentiable synthetic images of class c (n, C, H, W) and labels (n,)."""
        idx = synset.class_indices(c)
        if self.cfg.syn_pairing == "all" and synset.n_variants > 1:
            v = synset.n_variants
            variant = torch.arange(v, device=idx.device).repeat_interleave(len(idx))
            return synset.images_of(idx.repeat(v), variant)
        return synset.images_of(idx, generator=generator)

    def step(self, synset, generator) -> Step:
        net = self.ctx.make_net()
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        real_logits = compiled_logits if self.cfg.compile else _logits
        opt_net = torch.optim.SGD(params, lr=self.cfg.lr_net, momentum=self.cfg.momentum_net)
        outer_loop, inner_loop = self.loops()
        data = self.ctx.dataset
        num_classes = self.ctx.info.num_classes
        total = 0.0
        logs: dict[str, float] = {}
        for ol in range(outer_loop):
            self._freeze_batchnorm(net, generator)
            loss = torch.zeros((), device=self.ctx.device)
            for c in range(num_classes):
                real = data.sample_class(c, self.cfg.batch_real, generator)
                syn, labels_syn = self.class_images(synset, c, generator)
                real, syn = self._augment(real, syn, generator=generator)
                labels_real = torch.full((len(real),), c, dtype=torch.long, device=real.device)
                with autocast(self.precision, real.device):
                    loss_real = F.cross_entropy(real_logits(net, real), labels_real)
                g_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
                with autocast(self.precision, syn.device):
                    loss_syn = F.cross_entropy(net(syn), labels_syn)
                g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
                loss = loss + match_loss(g_syn, g_real, self.cfg.match_bias)
            logs = yield loss
            total += loss.item()
            if ol == outer_loop - 1:
                break
            self._train_net(net, opt_net, synset, inner_loop, generator)
        mean = total / (num_classes * outer_loop)  # the official log: per class and outer loop
        return {"loss": mean, self.name: mean, **logs}

    @property
    def name(self) -> str:
        return "dsa" if self.augment_matching else "dc"

    def _train_net(self, net: nn.Module, opt: torch.optim.Optimizer, synset, epochs: int, generator) -> None:
        """``epochs`` passes of SGD over the detached synthetic set (DC's inner loop)."""
        if epochs <= 0:
            return
        net.train()
        with torch.no_grad():
            pairing = self.cfg.syn_pairing if synset.n_variants > 1 else "random"
            images, labels = synset.materialize(generator, pairing=pairing)
        # DSA: one draw per image here (not the matching step's shared batch draw)
        dsa = self.ctx.dsa_strategy if self.augment_matching else ""
        for _ in range(epochs):
            train_epoch(
                net,
                opt,
                images,
                labels,
                self.cfg.batch_train,
                generator,
                dsa,
                False,
                self.ctx.info.im_size,
                precision=self.precision,
            )

    def _freeze_batchnorm(self, net: nn.Module, generator) -> None:
        """Official DC: with BatchNorm, set running statistics from a real batch, then freeze them."""
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        data = self.ctx.dataset
        real = torch.cat([data.sample_class(c, self.cfg.bn_size_pc, generator) for c in range(data.num_classes)])
        net.train()
        with torch.no_grad():
            net(real)
        for m in bns:
            m.eval()


@dataclass(frozen=True)
class DSAConfig(DCConfig):
    # chosen on the validation split as DC's, with the CPU DSA preset
    # (bench/results/val_search/dsa_haba_ipc1_lr_hallucinators.md): 1e-3 69.73%, 3e-4 71.71%, 1e-4 70.75%, 3e-5 69.81%
    lr_hallucinators: float = option(3e-4, help="SGD lr of HaBa's hallucinators", gt=0)


@METHODS.register("dsa")
class DSA(DC):
    """DC with siamese DSA in the matching step and in the inner-loop training."""

    label = "DSA"
    help = "DC with siamese augmentation"

    Config = DSAConfig

    augment_matching = True
