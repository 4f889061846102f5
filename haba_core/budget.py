"""Storage accounting and budget solving.

Storage is what a synthetic set must keep to be rebuilt: base floats plus hallucinator parameters plus fixed
masks (FreD's per-class frequency choice); labels are implied by the class-major layout and cost nothing. A
budget is given in IPC-equivalents: ``budget_ipc * classes * C * H * W`` floats, the storage of ``budget_ipc``
plain images per class. The official HaBa runs at "IPC k" store k bases per class *plus* the hallucinators
(1.91x the pixel storage at CIFAR10 IPC 1); budget-matched mode instead solves the largest ``n_bases`` that
fits.

Each synset kind owns its storage formula (``Synset.storage_of``); nothing here names a kind. A :class:`Plan` is
the storage record (``haba_core.storage.Storage``) with what the solver adds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from haba_core.data import DatasetInfo
from haba_core.errors import BudgetError, ConfigError
from haba_core.storage import Storage
from haba_core.synsets import SYNSETS


@dataclass(frozen=True)
class Plan(Storage):
    """The storage a synset of a given shape will have, against the budget (if any), and what to build it with.
    Its JSON is the storage record's (:meth:`Storage.to_dict`)."""

    image_hw: tuple[int, int] = (0, 0)  # (H, W) of the dataset's images

    @property
    def basis_size(self) -> int | None:
        """The stored basis size to build the synset with: None when bases are full size."""
        _, h, w = self.basis_shape
        return None if (h, w) == tuple(self.image_hw) else h

    @property
    def budget_images(self) -> int:
        """The storage budget in whole images per class, rounded up: ``budget_ipc`` when one was set, else the
        IPC-equivalent of what is stored. Settings the reference keys by IPC (DC's loops) follow it, so every
        kind at one budget runs the same algorithm (a HaBa set of 3 bases per class at budget 1 runs IPC 1's)."""
        ipc = self.budget_ipc if self.budget_ipc is not None else self.ipc_equivalent
        return max(1, math.ceil(round(ipc, 6)))  # round: 9.9999999 stored floats-wise is 10

    def floats_parts(self) -> str:
        """The stored floats by part, e.g. ``bases 5,880 + masks 245`` (bases always, other parts when not 0)."""
        parts = {"bases": self.floats_bases, "hallucinators": self.floats_hallucinators, "masks": self.floats_masks}
        return " + ".join(f"{k} {v:,}" for k, v in parts.items() if v or k == "bases")

    def describe(self) -> str:
        """A human-readable storage breakdown (what the CLI's ``budget`` command prints)."""
        c, h, w = self.basis_shape
        lines = [
            f"synset               {self.kind}",
            f"bases per class      {self.n_bases}  ({c}x{h}x{w} each)",
            f"bases floats         {self.floats_bases:,}",
        ]
        if self.n_hallucinators:
            each = self.floats_hallucinators // self.n_hallucinators
            lines += [
                f"hallucinators        {self.n_hallucinators}  ({each:,} floats each)",
                f"hallucinator floats  {self.floats_hallucinators:,}",
            ]
        if self.floats_masks:
            lines.append(f"mask floats          {self.floats_masks:,}")
        lines += [
            f"images per class     {self.images_per_class}  ({self.images_per_class * self.num_classes} in all)",
            f"stored floats        {self.floats_total:,}  = {self.ipc_equivalent:.3f} IPC-equivalents",
        ]
        if self.basis_note:
            lines.append(f"note                 {self.basis_note}")
        if self.budget_ipc is not None:
            lines.append(
                f"budget               {self.budget_floats:,} floats (IPC {self.budget_ipc:g}); "
                f"{100 * self.floats_total / self.budget_floats:.1f}% used"
            )
        return "\n".join(lines)


def _options(kind: str, options: dict) -> dict:
    """The kind's options with defaults filled in (another kind's options dropped; unknown ones fail)."""
    return SYNSETS.get(kind).options_from(options)


def plan(
    info: DatasetInfo,
    kind: str,
    n_bases: int,
    *,
    basis_size: int | None = None,
    budget_ipc: float | None = None,
    **options: Any,
) -> Plan:
    """Storage of a synset with ``n_bases`` per class (no solving): the kind's own formula. ``options`` are the
    kind's own (its ``Config`` fields, e.g. HaBa's ``n_hallucinators``); omitted ones take their defaults."""
    if basis_size is not None and basis_size > max(info.im_size):
        h, w = info.im_size
        raise ConfigError(
            f"synset.basis_size={basis_size} is larger than {info.name}'s {h}x{w} images; use at most "
            f"{max(h, w)}, 'full' ({h}x{w}) or 'auto'."
        )
    s = SYNSETS.get(kind).storage_of(info, n_bases, basis_size, **_options(kind, options))
    return Plan(
        kind=kind,
        n_bases=n_bases,
        n_hallucinators=int(s["n_hallucinators"]),
        basis_shape=tuple(s["basis_shape"]),
        images_per_class=n_bases * max(1, int(s["n_hallucinators"])),
        num_classes=info.num_classes,
        image_floats=info.channels * info.im_size[0] * info.im_size[1],
        floats_bases=int(s["floats_bases"]),
        floats_hallucinators=int(s["floats_hallucinators"]),
        floats_masks=int(s.get("floats_masks", 0)),
        budget_ipc=budget_ipc,
        image_hw=tuple(info.im_size),
    )


def _fits(info, kind, budget_ipc, basis_size, options) -> Plan | None:
    """The largest plan that fits, or None. Pure arithmetic: no messages, no recursion."""
    one = plan(info, kind, 1, basis_size=basis_size, budget_ipc=budget_ipc, **options)
    budget, fixed = one.budget_floats, one.floats_hallucinators + one.floats_masks
    n = (budget - fixed) // one.floats_bases if budget >= fixed else 0
    return plan(info, kind, int(n), basis_size=basis_size, budget_ipc=budget_ipc, **options) if n >= 1 else None


def _check_request(kind: str, budget_ipc, basis_size) -> None:
    SYNSETS.get(kind)  # an unknown kind: the registry's error, with close matches
    if isinstance(budget_ipc, bool) or not isinstance(budget_ipc, (int, float)) or not budget_ipc > 0:
        raise BudgetError(f"budget_ipc must be a positive number, got {budget_ipc!r}.")
    if basis_size is not None and (not isinstance(basis_size, int) or basis_size < 3):
        raise ConfigError(f"basis_size must be an integer >= 3 (or None for full size), got {basis_size!r}.")


def solve(info: DatasetInfo, kind: str, budget_ipc: float, *, basis_size: int | None = None, **options: Any) -> Plan:
    """The largest ``n_bases`` per class whose storage fits ``budget_ipc``; raises BudgetError if none does."""
    _check_request(kind, budget_ipc, basis_size)
    options = _options(kind, options)
    fitted = _fits(info, kind, budget_ipc, basis_size, options)
    if fitted is None:
        raise BudgetError(_too_small(info, kind, budget_ipc, basis_size, options))
    return fitted


def _too_small(info: DatasetInfo, kind: str, budget_ipc: float, basis_size: int | None, options: dict) -> str:
    """What does not fit, and what would: at most one fewer-hallucinators and one smaller-size option.
    Every probe is a call of :func:`_fits` (arithmetic), so this takes O(k + size) steps, never recursion."""
    one = plan(info, kind, 1, basis_size=basis_size, budget_ipc=budget_ipc, **options)
    shared = one.n_hallucinators
    what = f" plus {shared} hallucinator(s) ({one.floats_hallucinators:,} floats)" if shared else ""
    what += f" plus masks ({one.floats_masks:,} floats)" if one.floats_masks else ""
    msg = (
        f"A budget of IPC {budget_ipc:g} ({one.budget_floats:,} floats) cannot hold one basis per class "
        f"({one.floats_bases:,} floats){what}."
    )
    hints = []
    if shared and "n_hallucinators" in options:
        fitting = (
            k
            for k in range(shared - 1, 0, -1)
            if _fits(info, kind, budget_ipc, basis_size, {**options, "n_hallucinators": k})
        )
        fewer = next(fitting, None)  # the most that fit: probing stops there
        if fewer:
            hints.append(f"use n_hallucinators={fewer}")
    for size in range((basis_size or min(info.im_size)) - 1, 3, -1):
        p = _fits(info, kind, budget_ipc, size, options)
        if p:
            hints.append(f"store smaller bases (synset.basis_size={size} fits {p.n_bases} per class)")
            break
    needed = one.floats_total / (info.num_classes * one.image_floats)
    hints.append(f"raise budget_ipc to at least {needed:.3g}")
    hints.append("or set synset.n_bases explicitly to run over budget (storage is still reported)")
    return msg + " Options: " + "; ".join(hints) + "."


def solve_or_none(info, kind, budget_ipc, *, basis_size=None, **options) -> Plan | None:
    try:
        return solve(info, kind, budget_ipc, basis_size=basis_size, **options)
    except BudgetError:
        return None


def auto_basis_size(info: DatasetInfo, kind: str, budget_ipc: float | None, **options: Any) -> int | None:
    """``None`` (full size) if full-size bases fit the budget, else the largest of H/2, H/3, ... that fits
    (None again when nothing fits: the budget solve then explains what would). A kind whose
    ``auto_min_factor`` is k > 1 starts at H/k instead of full size. ``options``: the kind's own.

    The one rule the CLI, the library and the app share for ``synset.basis_size="auto"``. Whole-factor
    reductions (28 -> 14 on Fashion-MNIST, 32 -> 16 on CIFAR) upsample cleanly and leave room for several bases
    per class next to the hallucinators (IPC 1 Fashion-MNIST: 3 bases of 14x14 + 5 hallucinators).
    """
    if kind not in SYNSETS or not isinstance(budget_ipc, (int, float)) or not budget_ipc > 0:
        return None
    options = _options(kind, options)
    chosen = validated_size(info, kind, budget_ipc)
    if chosen is not None and _fits(info, kind, budget_ipc, chosen[0], options):
        return chosen[0]
    first = max(1, int(SYNSETS.get(kind).auto_min_factor))
    if first == 1 and _fits(info, kind, budget_ipc, None, options):
        return None
    full = min(info.im_size)
    for factor in range(max(2, first), full // 3 + 1):
        size = round(full / factor)
        if size >= 4 and _fits(info, kind, budget_ipc, size, options):
            return size
    return None


def validated_size(info: DatasetInfo, kind: str, budget_ipc: float) -> tuple[int | None, str] | None:
    """(size, results file) where a validation search chose ``kind``'s basis size for this image shape and
    budget (``Synset.validated_basis_sizes``), else None."""
    table = SYNSETS.get(kind).validated_basis_sizes.get((info.channels, *info.im_size), {})
    return next((v for b, v in table.items() if abs(b - budget_ipc) < 1e-9), None)


def lr_note(kind: type, method: str, budget_ipc: float, chosen: tuple[float, str]) -> str:
    """The sentence every front end prints when synset.lr_hallucinators took a validated per-budget value."""
    return (
        f"{kind.label or kind.kind}'s hallucinators learn at lr {chosen[0]:g} with {method} at IPC {budget_ipc:g}: "
        f"the lr a validation search chose for this shape and budget ({chosen[1]}). Set synset.lr_hallucinators to "
        "choose another."
    )


def basis_note(info: DatasetInfo, kind: str, budget_ipc: float, size: int, **options: Any) -> str:
    """The sentence every front end prints when ``auto`` chose a smaller basis size."""
    h, w = info.im_size
    cls = SYNSETS.get(kind)
    chosen = validated_size(info, kind, budget_ipc)
    if chosen is not None and chosen[0] == size:
        return (
            f"{cls.label or kind} stores {size}x{size} bases for {h}x{w} images at IPC {budget_ipc:g}: the size a "
            f"validation search chose for this shape and budget ({chosen[1]}). Set synset.basis_size to choose "
            "another."
        )
    if cls.auto_min_factor > 1:
        return (
            f"{cls.label or kind} stores {size}x{size} bases for {h}x{w} images (basis_size=auto starts at 1/"
            f"{cls.auto_min_factor} of the side). Set synset.basis_size to trade resolution against bases per class."
        )
    shared = plan(info, kind, 1, **options).n_hallucinators
    what = f"bases plus {shared} hallucinators" if shared else "images"
    return (
        f"Full-size {h}x{w} {what} do not fit IPC {budget_ipc:g}; basis_size=auto stores them at {size}x{size} "
        "(the largest whole-factor reduction that fits) and upsamples them for training. Set synset.basis_size "
        "to trade resolution against bases per class."
    )


def plan_from_config(info: DatasetInfo, cfg) -> Plan:
    """The synset plan a :class:`SynsetConfig` asks for: explicit ``n_bases`` wins, else the budget solve.
    ``basis_size="auto"`` is resolved here (:func:`auto_basis_size`); the plan records the choice."""
    SYNSETS.get(cfg.kind)
    options = dict(cfg.params)
    size, note = cfg.basis_size, ""
    if size == "auto":
        size = None
        if cfg.n_bases is None and cfg.budget_ipc is not None:
            size = auto_basis_size(info, cfg.kind, cfg.budget_ipc, **options)
            if size is not None:
                note = basis_note(info, cfg.kind, cfg.budget_ipc, size, **options)
    if cfg.n_bases is not None:
        if cfg.n_bases < 1:
            raise ConfigError(f"synset.n_bases must be >= 1, got {cfg.n_bases}.")
        p = plan(info, cfg.kind, cfg.n_bases, basis_size=size, budget_ipc=cfg.budget_ipc, **options)
    elif cfg.budget_ipc is None:
        raise ConfigError("Set synset.budget_ipc (storage budget) or synset.n_bases (bases per class).")
    else:
        p = solve(info, cfg.kind, cfg.budget_ipc, basis_size=size, **options)
    return dataclasses.replace(p, basis_note=note) if note else p
