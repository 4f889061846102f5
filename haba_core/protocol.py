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
label. Records written before protocols had ids (``version`` 1: augment-then-standardize, standardization
on for HaBa sets only, ConvNet padding 1 on 1x28x28) read back as ``"legacy"`` and never match a current one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# 2: reference ConvNet (first conv padded by 3 on 1x28x28), standardize before augment, one protocol for all
# kinds. Bump when evaluation code changes what a protocol's numbers mean.
PROTOCOL_VERSION = 2
DEFAULT_LR = 0.01  # the lr when the protocol does not fix one and the set learned none


@dataclass(frozen=True)
class EvalProtocol:
    epochs: int = 300
    batch: int = 256
    lr: float | None = None  # None: the synthetic set's learned lr (MTT) if it has one, else DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: str = ""  # DSA strategy applied to every training batch ("" for none)
    standardize: bool = False  # per-batch standardization (HaBa's official evaluation), before DSA
    pairing: str = "random"  # sets with variants (HaBa): "random" (each basis once per epoch) | "all"
    split: str = "test"  # "test" | "val" (the held-out validation split of the training set)
    test_images: int | None = None  # how many images the accuracy is measured on
    reported: str = "final"  # the final network's accuracy, never the best over epochs
    order: str = "standardize_then_augment"
    version: int = PROTOCOL_VERSION
    precision: str = "fp32"  # "fp32" | "bf16": the networks' forward pass under bfloat16 autocast
    # with standardize: test images per standardization batch (HaBa's official test loader: 128); None otherwise
    standardize_test_batch: int | None = None

    @classmethod
    def from_config(cls, ecfg, dsa_strategy: str, test_images: int | None = None, device=None) -> EvalProtocol:
        """The protocol an :class:`~haba_core.config.EvalConfig` describes (``dsa_strategy``: the run's;
        ``eval.precision=auto`` resolves for ``device``, see :func:`resolve_precision`)."""
        return cls(
            epochs=int(ecfg.epochs),
            batch=int(ecfg.batch),
            lr=None if ecfg.lr is None else float(ecfg.lr),
            momentum=float(ecfg.momentum),
            weight_decay=float(ecfg.weight_decay),
            dsa=dsa_strategy if ecfg.dsa else "",
            standardize=bool(ecfg.standardize),  # None (configs written before protocols) reads as off
            pairing=str(ecfg.pairing),
            split=str(getattr(ecfg, "split", "test")),
            test_images=test_images,
            precision=resolve_precision(str(getattr(ecfg, "precision", "fp32")), device),
            standardize_test_batch=int(getattr(ecfg, "standardize_test_batch", 128)) if ecfg.standardize else None,
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
        """Every field, but ``standardize_test_batch`` when unset: plain protocols' ids and records stay as
        they were before it existed (evaluation cells keyed by the record keep their keys)."""
        out = dataclasses.asdict(self)
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
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


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
