"""Matching Training Trajectories (Cazenavette et al., "Dataset Distillation by Matching Training
Trajectories", CVPR 2022), with HaBa's hallucinated batches (Liu et al., NeurIPS 2022, official
``distill_fac.py``).

One outer iteration:

1. draw an expert k and a start epoch t in [0, max_start_epoch) (the official ``randint``); load
   theta*_t and theta*_{t+M} (M = ``expert_epochs``) as flat vectors;
2. unroll a student from theta_0 = theta*_t for N = ``syn_steps`` SGD steps on synthetic mini-batches,
   ``theta_{i+1} = theta_i - alpha * grad CE(f(x_i; theta_i), y_i)``, where alpha is the learnable student lr;
   the student is one flat parameter vector run through ``torch.func.functional_call`` (no module rebuilds)
   and each gradient keeps its graph (``create_graph``) so the loss reaches the synthetic set;
3. ``L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` drives one update of the synthetic
   set and of alpha (the step yields the loss; the engine updates); alpha is clipped at ``min_syn_lr`` afterwards.

Mini-batches: a random permutation of all bases is cut into chunks of ``batch_syn`` and consumed one chunk
per step (a new permutation when it runs out), as the official code. With HaBa, every step renders its
chunk through *one* random hallucinator (official); pixels render as they are. DSA (one draw per step).

The learned alpha is stored in ``synset.extra["syn_lr"]`` after every update, so evaluation trains with it.
Nothing is kept between iterations: the unrolled graph is freed by ``update``'s backward.

Speed. ``unroll="fast"`` renders only the step's chunk, views the flat vector as the parameter
dict, takes one ``autograd.grad`` over the flat vector and keeps float32 activations of multi-channel
images channels-last on CPU (oneDNN then skips its layout reorders; 1-channel batches stay NCHW, see
``unroll_fast``). ``unroll="reference"`` is the straightforward version (the whole set rendered every
step, a parameter dict rebuilt from slices, one gradient per parameter tensor, NCHW): same random draws,
same loss, kept as the profiling baseline (``bench/profile_mtt.py``). Independently,
freed activations are kept for reuse instead of being returned to the OS (page faults were a third of the CPU
time): ``haba distill`` runs under jemalloc where it is installed, else ``reuse_memory`` tells glibc to keep
them (``memory.py``); and ``precision="bf16"`` runs the student's forward under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from haba_core.errors import ConfigError, HabaError
from haba_core.methods.base import METHODS, Method, Step
from haba_core.methods.expert_set import ExpertSet
from haba_core.methods.experts import make_experts_hint
from haba_core.options import Precision, option
from haba_core.training import autocast


@dataclass(frozen=True)
class MTTConfig:
    expert_dir: str | None = option(None, help="the expert trajectories: a folder made by `haba experts`")
    syn_steps: int = option(30, help="N: unrolled student steps per iteration", ge=1)
    expert_epochs: int = option(2, help="M: the target is M expert epochs ahead of the start", ge=1)
    max_start_epoch: int = option(20, help="the start epoch is drawn from [0, max_start_epoch)", ge=1)
    lr_img: float = option(100.0, help="SGD lr of the bases (HaBa official; MTT uses 1000 at some settings)", gt=0)
    # HaBa's hallucinators: the official CIFAR runs use 100 (on ZCA data, 15000 iterations; the paper presets set
    # it). Chosen on the validation split with HaBa's official momentum 0.95 (reference ConvNet, CPU MTT preset,
    # IPC 1 as 3 bases of 14x14 + 5 hallucinators, 3 nets; bench/results/val_search/mtt_haba_ipc1_momentum095.md):
    # at lr_img 30, 0.01 75.85%, 0.03 75.46%, 0.1 75.43%; at lr_img 10, 0.01 75.75%, 0.03 75.73%, 0.1 74.92% (0.1
    # lets hallucinated pixels grow to |x| 286-407; the rest are within noise of each other).
    lr_hallucinators: float = option(0.01, help="SGD lr of HaBa's hallucinators", gt=0)
    # SGD momenta of the synthetic set and of the learned student lr; None: each code's official value, by what
    # the set is: MTT's 0.5 / 0.5 (``distill.py``) for pixels and other kinds, HaBa's 0.95 / 0.9
    # (``distill_fac.py``, bases and hallucinators alike) for haba. Resolved at setup and recorded in config.json.
    momentum: float | None = option(
        None, help="SGD momentum of the synthetic set; None: the official value for the set's kind", ge=0, lt=1
    )
    lr_lr: float = option(1e-5, help="SGD lr of the learnable student lr", gt=0)
    momentum_lr: float | None = option(
        None, help="SGD momentum of the learnable student lr; None: the official value for the set's kind", ge=0, lt=1
    )
    lr_teacher: float = option(0.01, help="the student lr it starts from", gt=0)
    min_syn_lr: float = option(0.001, help="the student lr is clipped at this after each update (official HaBa)", gt=0)
    batch_syn: int | None = option(None, help="bases per unrolled step; None: all of them (official default)", ge=1)
    max_experts: int | None = option(None, help="use only the first k experts of the folder", ge=1)
    # bf16 kept validation accuracy within 1 std of float32 at IPC 1, HaBa and pixels (experts trained without the
    # validation images; bench/results/val_search/mtt_precision_ipc1_{haba,pixels}.md)
    precision: Precision = option(
        "auto",
        help="the student's forward under bf16 autocast: auto (where the device computes it natively), fp32, bf16",
    )
    unroll: Literal["fast", "reference"] = option("fast", help="how the student is unrolled (see the module docstring)")
    reuse_memory: bool = option(
        True, help="CPU, glibc's allocator: keep freed memory (faster, more heap; not under jemalloc)"
    )
    channels_last: bool = option(True, help="fast fp32 unroll on CPU: NHWC activations for multi-channel images")


# synset kind -> (momentum of the synthetic set, momentum of the learned lr) in that kind's official MTT code
OFFICIAL_MOMENTA = {"pixels": (0.5, 0.5), "haba": (0.95, 0.9)}


@dataclass
class StepPlan:
    """The random draws of one unrolled step: bases (B,), one hallucinator index, DSA parameters."""

    idx: Tensor
    variant: int
    dsa: object | None


@METHODS.register("mtt")
class MTT(Method):
    Config = MTTConfig
    label = "MTT"
    help = "matching training trajectories of experts"
    expert_field = "expert_dir"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        info = ctx.info
        hint = make_experts_hint(cfg.expert_dir or "experts/" + info.name, info.name, bool(info.zca), ctx.net_params)
        if not cfg.expert_dir:
            raise ConfigError(f"method mtt needs expert trajectories: set method.expert_dir. Make them with: {hint}")
        self.experts = ExpertSet(cfg.expert_dir, cfg.max_experts, hint=hint)
        # The student: a module used only as a function of a flat parameter vector (never rebuilt).
        self.net = ctx.make_net()
        self.net.train()
        self.net.requires_grad_(False)
        self.experts.check_compatible(info, self.net, ctx.net_name, ctx.net_params)
        named = list(self.net.named_parameters())
        self.param_names = [n for n, _ in named]
        self.param_shapes = [tuple(p.shape) for _, p in named]
        self.param_sizes = [p.numel() for _, p in named]
        last_start = self.experts.epochs - cfg.expert_epochs  # the latest start that has a target
        if last_start < 0:
            raise ConfigError(
                f"method.expert_epochs={cfg.expert_epochs} exceeds the experts' {self.experts.epochs} epochs."
            )
        self.max_start = min(cfg.max_start_epoch, last_start + 1)
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=ctx.device, requires_grad=True)
        self.synset = None
        self._momenta = self.momenta_for("pixels")  # until setup sees the set's kind

    # -- engine hooks -------------------------------------------------------------------------------------
    def setup(self, synset) -> None:
        self.synset = synset
        synset.extra["syn_lr"] = float(self.syn_lr.detach())
        self._momenta = self.momenta_for(synset.kind)

    def momenta_for(self, kind: str) -> tuple[float, float]:
        """(synthetic set, learned lr) momenta: the config's where set, else the official code's for ``kind``."""
        official = OFFICIAL_MOMENTA.get(kind, OFFICIAL_MOMENTA["pixels"])
        return (
            official[0] if self.cfg.momentum is None else float(self.cfg.momentum),
            official[1] if self.cfg.momentum_lr is None else float(self.cfg.momentum_lr),
        )

    @property
    def momentum(self) -> float:
        return self._momenta[0]

    def resolved_params(self) -> dict:
        return {"momentum": self._momenta[0], "momentum_lr": self._momenta[1]}

    @classmethod
    def held_images(cls, cfg, n_syn: int) -> int:
        """The unroll keeps every student step's batch until the backward pass: syn_steps x batch_syn images."""
        return cfg.syn_steps * min(cfg.batch_syn or n_syn, n_syn)

    def param_groups(self) -> list[dict]:
        return [{"params": [self.syn_lr], "lr": self.cfg.lr_lr, "momentum": self._momenta[1], "name": "syn_lr"}]

    def after_update(self) -> None:
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.cfg.min_syn_lr)
        if self.synset is not None:
            self.synset.extra["syn_lr"] = float(self.syn_lr.detach())

    def eval_lr(self) -> float | None:
        return float(self.syn_lr.detach())

    def state_dict(self) -> dict:
        return {"syn_lr": self.syn_lr.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        if "syn_lr" in state:
            with torch.no_grad():
                self.syn_lr.copy_(state["syn_lr"])
            if self.synset is not None:
                self.synset.extra["syn_lr"] = float(self.syn_lr.detach())

    # -- one outer iteration ------------------------------------------------------------------------------
    def plan(self, synset, generator) -> list[StepPlan]:
        """Every random draw of the unroll, made up front in a fixed order (both unrolls share it)."""
        from haba_core.augment import sample_dsa_params

        n = synset.bases.shape[0]
        batch = min(self.cfg.batch_syn or n, n)
        chunks: list[Tensor] = []
        steps = []
        for _ in range(self.cfg.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(n, generator=generator).split(batch))
            idx = chunks.pop().to(synset.bases.device)
            variant = int(torch.randint(synset.n_variants, (1,), generator=generator))
            dsa = None
            if self.ctx.dsa_strategy:
                dsa = sample_dsa_params(
                    self.ctx.dsa_strategy, len(idx), generator, self.ctx.device, tuple(self.ctx.info.im_size)
                )
            steps.append(StepPlan(idx, variant, dsa))
        return steps

    def step(self, synset, generator) -> Step:
        k = int(torch.randint(len(self.experts), (1,), generator=generator))
        start = int(torch.randint(self.max_start, (1,), generator=generator))
        start_params, target_params = self.experts.rows(k, [start, start + self.cfg.expert_epochs], self.ctx.device)
        if torch.equal(start_params, target_params):
            raise HabaError(
                f"Expert {self.experts.paths[k]} does not move between epochs {start} and "
                f"{start + self.cfg.expert_epochs}, so the MTT loss would divide by zero; remake the experts."
            )
        plan = self.plan(synset, generator)
        unroll = self.unroll_fast if self.cfg.unroll == "fast" else self.unroll_reference
        student = unroll(synset, start_params, plan)
        loss = param_matching_loss(student, start_params, target_params)
        value = loss.item()
        logs = yield loss
        return {"loss": value, "mtt": value, "syn_lr": float(self.syn_lr.detach()), "start_epoch": float(start), **logs}

    def _params(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of a flat (P,) vector as the net's named parameters."""
        return {
            n: t.view(s)
            for n, t, s in zip(self.param_names, flat.split(self.param_sizes), self.param_shapes, strict=True)
        }

    def unroll_fast(self, synset, start_params: Tensor, plan: list[StepPlan]) -> Tensor:
        """theta_N as a differentiable function of the synthetic set and the student lr."""
        from haba_core.augment import apply_dsa

        theta = start_params.detach().clone().requires_grad_(True)  # (P,)
        bases, labels = synset.bases, synset.labels_base
        nhwc = self.cfg.channels_last and self.precision == "fp32" and self.ctx.device.type == "cpu"
        for s in plan:
            x, _ = synset.images_of(s.idx, torch.full((len(s.idx),), s.variant, device=bases.device))
            if s.dsa is not None:
                x = apply_dsa(x, s.dsa)
            if nhwc:  # every activation after the first conv follows this layout
                # A 1-channel batch (Fashion-MNIST) already counts as channels-last by its strides, so this
                # leaves it, and every layer after it, NCHW. That is kept on purpose: forcing NHWC there
                # (``clone(memory_format=...)``) measured 0.80x on the Fashion-MNIST unroll (ConvNet-64,
                # 100 images, one thread), group norm's backward being ~10x slower on NHWC at that size.
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.precision, self.ctx.device):
                out = functional_call(self.net, self._params(theta), (x,))
            ce = F.cross_entropy(out.float(), labels[s.idx])
            (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
            theta = theta - self.syn_lr * grad
        return theta

    def unroll_reference(self, synset, start_params: Tensor, plan: list[StepPlan]) -> Tensor:
        """The straightforward unroll: same arithmetic as ``unroll_fast``, none of its savings."""
        from haba_core.augment import apply_dsa

        theta = start_params.detach().clone().requires_grad_(True)
        for s in plan:
            # the whole set, every step, with every basis through this step's hallucinator
            n = synset.bases.shape[0]
            all_images, all_labels = synset.images_of(
                torch.arange(n, device=synset.bases.device), torch.full((n,), s.variant, device=synset.bases.device)
            )
            x, y = all_images[s.idx], all_labels[s.idx]
            if s.dsa is not None:
                x = apply_dsa(x, s.dsa)
            params = {}
            offset = 0
            for name, shape in zip(self.param_names, self.param_shapes, strict=True):
                size = math.prod(shape)
                params[name] = theta[offset : offset + size].reshape(shape)
                offset += size
            with autocast(self.precision, self.ctx.device):
                out = functional_call(self.net, params, (x,))
            ce = F.cross_entropy(out.float(), y)
            grads = torch.autograd.grad(ce, list(params.values()), create_graph=True)
            theta = theta - self.syn_lr * torch.cat([g.reshape(-1) for g in grads])
        return theta


def param_matching_loss(student: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """MTT's normalized loss ``||student - target||^2 / ||start - target||^2`` (flat (P,) vectors)."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()
