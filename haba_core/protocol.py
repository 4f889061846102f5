"""The evaluation protocol: one explicit, named object recorded with every accuracy we report.

Two results may sit in one table only when they were evaluated under the same protocol. A protocol is
everything about *how* fresh networks are trained on a synthetic set and tested, and nothing about *what*
is evaluated: epochs, batch, the lr rule (a fixed lr, or "the set's learned lr, else 0.01"), momentum,
weight decay, DSA strategy, whether every batch is standardized ``(x - x.mean()) / x.std()`` (HaBa's
official evaluation) and in which order (standardize first, then augment, as the reference code), the
HaBa pairing rule, the test split and its size, and which network is reported (the final one). With
standardization, the test images are standardized in batches as well, and that batch size (HaBa's official
test loader: 128) changes the numbers, so it is part of the protocol too.

The same protocol applies to every row of a comparison (HaBa, pixels, the random real subset): it never
depends on the synset's kind. ``id`` hashes the fields that decide comparability; ``name`` is a readable
label. The settings a protocol shares with a run's ``eval`` section and a trainer's recipe are defined once, in
:class:`EvalSettings`; ``tests/test_protocol_ids.py`` pins the ids of the protocols behind committed results.
Records written before protocols had ids (``version`` 1: augment-then-standardize, standardization on for HaBa
sets only, ConvNet padding 1 on 1x28x28) read back as ``"legacy"`` and never match a current one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from haba_core.options import option

# 2: reference ConvNet (first conv padded by 3 on 1x28x28), standardize before augment, one protocol for all
# kinds. Bump when evaluation code changes what a protocol's numbers mean.
PROTOCOL_VERSION = 2
DEFAULT_LR = 0.01  # the lr when the protocol does not fix one and the set learned none


@dataclass(frozen=True)
class EvalSettings:
    """How every fresh evaluation network is trained and tested: the settings that mean the same wherever they
    appear, defined here once. :class:`~haba_core.config.EvalConfig` (a run's ``eval`` section: these, which
    networks and how many, and settings a protocol resolves), :class:`EvalProtocol` (what a result records: these
    with the DSA strategy, precision and test set resolved) and :class:`~haba_core.training.Recipe` (what a
    trainer runs, and what a worker is sent as ``dataclasses.asdict``) extend it, so a field added here reaches
    all of them and the protocol's id (which then changes, unless :meth:`EvalProtocol.identity` leaves its
    default out, as it does ``precision="fp32"``)."""

    # epochs and lr first: a recipe is written Recipe(epochs, lr, ...)
    epochs: int = option(300, help="training epochs of each network", ge=1)
    lr: float | None = option(None, help="SGD lr; None: the learned synthetic lr (MTT) if any, else 0.01", gt=0)
    batch: int = option(256, help="training mini-batch", ge=1)
    momentum: float = option(0.9, help="SGD momentum", ge=0, lt=1)
    weight_decay: float = option(5e-4, help="SGD weight decay", ge=0)
    standardize: bool = option(
        False, help="per-batch (x - mean) / std before DSA (HaBa's official evaluation), all rows alike"
    )
    pairing: Literal["random", "all"] = option(
        "random", help="haba: random (each basis once per epoch, a random hallucinator) or all (every pair)"
    )
    split: Literal["test", "val"] = option("test", help="where accuracy is measured (val needs data.val_per_class)")


@dataclass(frozen=True)
class EvalProtocol(EvalSettings):
    """The evaluation settings resolved and recorded with every result; :attr:`id` hashes what decides whether
    two results are comparable."""

    dsa: str = ""  # DSA strategy applied to every training batch ("" for none)
    test_images: int | None = None  # how many images the accuracy is measured on
    reported: str = "final"  # the final network's accuracy, never the best over epochs
    order: str = "standardize_then_augment"
    version: int = PROTOCOL_VERSION
    precision: str = "fp32"  # "fp32" | "bf16": the networks' forward pass under bfloat16 autocast
    # with standardize: test images per standardization batch (HaBa's official test loader: 128); None otherwise
    standardize_test_batch: int | None = None

    def __post_init__(self):
        # Numbers take their field's type, so an id never depends on how a value was written (lr 1 vs 1.0 hash
        # differently as JSON); a standardize of None (configs written before protocols) reads as off.
        for name, kind in _scalar_types(type(self)).items():
            value = getattr(self, name)
            if value is not None or kind is bool:
                object.__setattr__(self, name, kind(value))

    @classmethod
    def from_config(cls, ecfg, dsa_strategy: str, test_images: int | None = None, device=None) -> EvalProtocol:
        """The protocol an :class:`~haba_core.config.EvalConfig` describes: its :class:`EvalSettings` as they are,
        ``dsa`` the run's ``dsa_strategy`` when ``ecfg.dsa``, ``eval.precision=auto`` resolved for ``device`` (see
        :func:`resolve_precision`), ``standardize_test_batch`` only with standardization."""
        shared = {f.name: getattr(ecfg, f.name) for f in dataclasses.fields(EvalSettings)}
        return cls(
            **shared,
            dsa=dsa_strategy if ecfg.dsa else "",
            test_images=test_images,
            precision=resolve_precision(str(ecfg.precision), device),
            standardize_test_batch=ecfg.standardize_test_batch if ecfg.standardize else None,
        )

    def lr_for(self, learned_lr: float | None) -> float:
        """The lr the networks train with: the fixed one, else the set's learned lr, else DEFAULT_LR."""
        if self.lr is not None:
            return self.lr
        return float(learned_lr) if learned_lr is not None else DEFAULT_LR

    def identity(self) -> dict[str, Any]:
        """What must agree for two results to be comparable (every field; the lr as its rule). ``precision``
        and ``standardize_test_batch`` joined later: at float32, and without standardization, they are left
        out, so the ids of results recorded before them stay valid."""
        out = self._fields()
        if out["precision"] == "fp32":
            del out["precision"]
        return out

    def _fields(self) -> dict[str, Any]:
        """Every field of the protocol (a :class:`~haba_core.training.Recipe`'s execution choices are no part of
        it), but ``standardize_test_batch`` when unset: plain protocols' ids and records stay as they were before
        it existed (evaluation cells keyed by the record keep their keys)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalProtocol)}
        if out["standardize_test_batch"] is None:
            del out["standardize_test_batch"]
        return out

    @property
    def id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    @property
    def name(self) -> str:
        """A readable label, e.g. ``plain-300ep-dsa`` or ``standardized-1000ep-dsa``."""
        parts = ["standardized" if self.standardize else "plain", f"{self.epochs}ep", "dsa" if self.dsa else "noaug"]
        if self.split != "test":
            parts.append(self.split)
        if self.precision != "fp32":
            parts.append(self.precision)
        return "-".join(parts)

    def record(self, learned_lr: float | None = None) -> dict[str, Any]:
        """The JSON written next to a result: every field, ``name``, ``id``, the lr rule and the lr used."""
        rule = "learned, else 0.01" if self.lr is None else "fixed"
        lr = self.lr_for(learned_lr)
        return {**self._fields(), "name": self.name, "id": self.id, "lr_rule": rule, "lr": lr}


@functools.cache
def _scalar_types(cls: type) -> dict[str, type]:
    """The fields of ``cls`` annotated ``int``, ``float`` or ``bool`` (optional or not), with that type."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) else [tp]
        if len(args) == 1 and args[0] in (int, float, bool):
            out[name] = args[0]
    return out


def resolve_precision(precision: str, device=None) -> str:
    """``"auto"`` -> ``"bf16"`` where the device computes bfloat16 natively (a CPU with AVX512-BF16 or AMX, a
    CUDA GPU that supports it), else ``"fp32"``; other values pass through. bf16 evaluation kept accuracy
    within one std of float32 on Fashion-MNIST (``bench/precision_check.py``) and trained 1.2-1.8x faster."""
    if precision != "auto":
        return precision
    import torch

    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    from haba_core.bf16 import native_bf16_cpu

    return "bf16" if native_bf16_cpu() else "fp32"


def protocol_id(record: Mapping[str, Any] | None) -> str:
    """The id in a recorded protocol; ``"legacy"`` for records written before protocols had ids."""
    if not isinstance(record, Mapping):
        return "missing"
    return str(record.get("id") or "legacy")


def protocol_label(record: Mapping[str, Any] | None) -> str:
    """``name (id)`` of a recorded protocol, for tables and warnings."""
    if not isinstance(record, Mapping):
        return "no protocol recorded"
    pid = protocol_id(record)
    if pid == "legacy":
        std = "standardized" if record.get("standardize") else "plain"
        return f"legacy ({std}, {record.get('epochs', '?')} epochs, before protocol ids)"
    return f"{record.get('name', '?')} ({pid})"


def distinct_protocols(records: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """The distinct protocol labels among ``records``, in first-seen order (one entry: comparable)."""
    return list(dict.fromkeys(protocol_label(r) for r in records))


class MixedProtocolsError(ValueError):
    """Results evaluated under different protocols were put side by side."""


def require_one_protocol(records: Iterable[Mapping[str, Any] | None], what: str = "these results") -> str:
    """The common protocol id of ``records``; raises :class:`MixedProtocolsError` naming them otherwise."""
    records = list(records)
    ids = list(dict.fromkeys(protocol_id(r) for r in records))
    if len(ids) > 1:
        labels = ", ".join(distinct_protocols(records))
        raise MixedProtocolsError(
            f"{what} were evaluated under {len(ids)} different protocols ({labels}); re-evaluate them under one "
            "protocol (same eval.* settings) before comparing them."
        )
    return ids[0] if ids else "missing"
