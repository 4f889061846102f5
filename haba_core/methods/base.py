"""The DD-objective interface.

A method gets a :class:`Context` (real data, device, the distillation network factory, DSA) and, for each
outer iteration, ``step(synset, generator)``: a generator that builds a loss from differentiable synthetic
batches and *yields* it, once per synthetic-set update (DC yields several per iteration). The engine owns the
optimization: for each yielded loss it adds HaBa's constraint, back-propagates, steps every optimizer, calls
the method's :meth:`Method.after_update` hook and sends back the update's logs (``logs = yield loss``). The
step *returns* a dict of named float losses. Methods do no I/O and never touch an optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from haba_core.augment import apply_dsa, sample_dsa_params
from haba_core.nets import create_net
from haba_core.protocol import resolve_precision
from haba_core.registry import Registry
from haba_core.validate import checked_fields

METHODS: Registry = Registry("method")

# field metadata of a method option that is a number of real images drawn from one class at once (DM's and DC's
# batch_real): the engine clamps it to the smallest class (haba_core.preflight), as the reference's get_images does
PER_CLASS_REAL = {"per_class_real": True}


def per_class_real_fields(config_cls: type) -> list[str]:
    """The names of ``config_cls``'s fields marked :data:`PER_CLASS_REAL`."""
    return [f.name for f in dataclasses.fields(config_cls) if f.metadata.get("per_class_real")]


# what a method's step is: yields losses (receiving each update's logs), returns the iteration's named losses
Step = Generator[Tensor, dict, dict]


@dataclass
class Context:
    """What a method may use: the real data on ``device``, the net recipe and the DSA strategy."""

    dataset: Any  # haba_core.data.Dataset, tensors on ``device``
    device: torch.device
    dsa_strategy: str = ""
    net_name: str = "convnet"
    net_params: dict = field(default_factory=dict)
    budget_images: int = 1  # the storage budget in whole images per class (budget.Plan.budget_images)

    @property
    def info(self):
        return self.dataset.info

    def make_net(self) -> nn.Module:
        i = self.info
        return create_net(self.net_name, i.channels, i.num_classes, i.im_size, **self.net_params).to(self.device)

    def augment(self, *batches: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """Siamese DSA: one parameter draw applied to every batch, one transform for the whole batch (as the
        official DSA code does when matching: a shared seed switches it to batch mode)."""
        if not self.dsa_strategy:
            return list(batches)
        n = max(len(b) for b in batches)
        p = sample_dsa_params(self.dsa_strategy, n, generator, self.device, tuple(self.info.im_size), batchwise=True)
        return [apply_dsa(b, p) for b in batches]


class Method:
    """Base class; subclasses set ``Config`` (a dataclass of hyperparameters) and implement ``step``."""

    Config: type = object
    label = ""  # how front ends name the backend (default: its registry key)
    help = ""  # one line for the app and the CLI
    # What the method needs before it can run: the ``Config`` field naming a folder of expert trajectories (made by
    # ``haba experts``), or None. Front ends ask :meth:`needs_experts` (the New run page's experts panel and check,
    # the bench's expert jobs) instead of comparing method names.
    expert_field: str | None = None

    def __init__(self, cfg, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx

    @classmethod
    def make_config(cls, params: dict) -> Any:
        valid = ", ".join(sorted(f.name for f in dataclasses.fields(cls.Config)))

        def unknown(key: str, hint: str) -> str:
            return f"Unknown hyperparameter method.{key} for {cls.__name__}.{hint} Valid: {valid}."

        return cls.Config(**checked_fields(cls.Config, params, "method.", unknown))

    @classmethod
    def needs_experts(cls) -> bool:
        """Whether the method reads expert trajectories (its folder is the option ``method.<expert_field>``)."""
        return cls.expert_field is not None

    @property
    def lr_img(self) -> float:
        return float(self.cfg.lr_img)

    @property
    def lr_hallucinators(self) -> float:
        """Default lr of HaBa's hallucinators: the method's ``lr_hallucinators`` if it has one, else lr_img."""
        lr = getattr(self.cfg, "lr_hallucinators", None)
        return float(lr) if lr is not None else self.lr_img

    @property
    def momentum(self) -> float:
        return float(getattr(self.cfg, "momentum", 0.5))

    @property
    def reuse_memory(self) -> bool:
        """Whether the engine tells glibc's malloc to keep freed memory on a CPU (``memory.reuse_freed_memory``): a
        method's ``reuse_memory`` option where it has one, else yes. Every method's step allocates activations
        above glibc's mmap threshold (one ConvNet-128 map of 256 images at 32x32 is 134 MB), which otherwise fault
        in afresh each time: DM's float32 step at Fashion-MNIST IPC 10 took 2.996 s under glibc's defaults and 1.201 s
        keeping freed memory (two threads, ``bench/results/peers.md``)."""
        return bool(getattr(self.cfg, "reuse_memory", True))

    @functools.cached_property
    def precision(self) -> str:
        """The arithmetic of the method's forward passes, resolved once: ``"fp32"`` or ``"bf16"`` (a method's
        ``precision`` hyperparameter, where it has one; ``"auto"`` is bf16 where the device computes it natively).
        The engine records it in ``status.json``; the loops read it every step."""
        return resolve_precision(str(getattr(self.cfg, "precision", "fp32")), self.ctx.device)

    @classmethod
    def held_images(cls, cfg, n_syn: int) -> int:
        """How many synthetic images one update keeps activations of until its backward pass, for a set of ``n_syn``
        bases (a lower bound the engine checks against the memory it may use): each basis at least once."""
        return n_syn

    def param_groups(self) -> list[dict]:
        """Extra learnable parameters the method owns (MTT's student lr)."""
        return []

    def step(self, synset, generator: torch.Generator) -> Step:
        """One outer iteration: ``logs = yield loss`` for each synthetic-set update, then return named losses."""
        raise NotImplementedError

    # hooks the engine calls (no-ops unless a method needs them)
    def setup(self, synset) -> None:
        """Once, after the synthetic set is built (before any step or checkpoint restore)."""

    def resolved_params(self) -> dict:
        """Hyperparameters the method derived from the context rather than read from its config (DC's loops from
        the storage budget); the engine records them in the run's config, so a run's config.json says what ran."""
        return {}

    def after_update(self) -> None:
        """After every synthetic-set update (e.g. MTT clips its learned lr)."""

    def eval_lr(self) -> float | None:
        """The lr the evaluation should use (MTT's learned lr), or None for the protocol default."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def create_method(name: str, params: dict, ctx: Context) -> Method:
    cls = METHODS.get(name)
    return cls(cls.make_config(params or {}), ctx)


def list_methods() -> list[str]:
    return METHODS.list()
