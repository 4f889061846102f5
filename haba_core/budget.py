"""Storage accounting and budget solving.

Storage is what a synthetic set must keep to be rebuilt: base floats plus hallucinator parameters
(labels are implied by the class-major layout and cost nothing). A budget is given in IPC-equivalents:
``budget_ipc * classes * C * H * W`` floats, the storage of ``budget_ipc`` plain images per class. The
official HaBa runs at "IPC k" store k bases per class *plus* the hallucinators (1.91x the pixel storage at
CIFAR10 IPC 1); budget-matched mode instead solves the largest ``n_bases`` that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from haba_core.data import DatasetInfo
from haba_core.errors import BudgetError, ConfigError
from haba_core.synsets.haba import hallucinator_floats


@dataclass(frozen=True)
class Plan:
    """What a synset of a given shape stores, and how it compares with the budget (if any)."""

    kind: str
    n_bases: int  # per class
    n_hallucinators: int
    basis_shape: tuple[int, int, int]  # (C_b, h, w)
    image_floats: int  # C * H * W of one real image
    num_classes: int
    floats_bases: int
    floats_hallucinators: int
    budget_ipc: float | None

    @property
    def floats_total(self) -> int:
        return self.floats_bases + self.floats_hallucinators

    @property
    def ipc_equivalent(self) -> float:
        return self.floats_total / (self.num_classes * self.image_floats)

    @property
    def budget_floats(self) -> int | None:
        return None if self.budget_ipc is None else int(self.budget_ipc * self.num_classes * self.image_floats)

    @property
    def images_per_class(self) -> int:
        return self.n_bases * max(1, self.n_hallucinators)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "n_bases": self.n_bases,
            "n_hallucinators": self.n_hallucinators,
            "basis_shape": list(self.basis_shape),
            "images_per_class": self.images_per_class,
            "images_total": self.images_per_class * self.num_classes,
            "floats_bases": self.floats_bases,
            "floats_hallucinators": self.floats_hallucinators,
            "floats_total": self.floats_total,
            "ipc_equivalent": self.ipc_equivalent,
            "budget_ipc": self.budget_ipc,
            "budget_floats": self.budget_floats,
            "budget_used": None if self.budget_floats is None else self.floats_total / self.budget_floats,
        }

    def describe(self) -> str:
        """A human-readable storage breakdown (what the CLI's ``budget`` command prints)."""
        c, h, w = self.basis_shape
        lines = [
            f"synset               {self.kind}",
            f"bases per class      {self.n_bases}  ({c}x{h}x{w} each)",
            f"bases floats         {self.floats_bases:,}",
        ]
        if self.kind == "haba":
            each = self.floats_hallucinators // self.n_hallucinators
            lines += [
                f"hallucinators        {self.n_hallucinators}  ({each:,} floats each)",
                f"hallucinator floats  {self.floats_hallucinators:,}",
            ]
        lines += [
            f"images per class     {self.images_per_class}  ({self.images_per_class * self.num_classes} in all)",
            f"stored floats        {self.floats_total:,}  = {self.ipc_equivalent:.3f} IPC-equivalents",
        ]
        if self.budget_ipc is not None:
            lines.append(
                f"budget               {self.budget_floats:,} floats (IPC {self.budget_ipc:g}); "
                f"{100 * self.floats_total / self.budget_floats:.1f}% used"
            )
        return "\n".join(lines)


def plan(
    info: DatasetInfo,
    kind: str,
    n_bases: int,
    n_hallucinators: int = 5,
    single_channel: bool = False,
    basis_size: int | None = None,
    budget_ipc: float | None = None,
) -> Plan:
    """Storage of a synset with ``n_bases`` per class (no solving)."""
    c = info.channels
    h, w = (basis_size, basis_size) if basis_size else tuple(info.im_size)
    cb = 1 if (kind == "haba" and single_channel) else c
    k = n_hallucinators if kind == "haba" else 0
    return Plan(
        kind=kind,
        n_bases=n_bases,
        n_hallucinators=k,
        basis_shape=(cb, h, w),
        image_floats=c * info.im_size[0] * info.im_size[1],
        num_classes=info.num_classes,
        floats_bases=n_bases * info.num_classes * cb * h * w,
        floats_hallucinators=hallucinator_floats(cb, c, (h, w), k) if k else 0,
        budget_ipc=budget_ipc,
    )


def solve(
    info: DatasetInfo,
    kind: str,
    budget_ipc: float,
    n_hallucinators: int = 5,
    single_channel: bool = False,
    basis_size: int | None = None,
) -> Plan:
    """The largest ``n_bases`` per class whose storage fits ``budget_ipc``; raises BudgetError if none does."""
    if kind not in ("pixels", "haba"):
        raise ConfigError(f"Unknown synset {kind!r}. Valid choices: haba, pixels.")
    if budget_ipc is None or budget_ipc <= 0:
        raise BudgetError(f"budget_ipc must be a positive number, got {budget_ipc!r}.")
    one = plan(info, kind, 1, n_hallucinators, single_channel, basis_size, budget_ipc)
    budget = one.budget_floats
    per_class_row = one.floats_bases  # floats of one basis for every class
    n = (budget - one.floats_hallucinators) // per_class_row if budget >= one.floats_hallucinators else 0
    if n < 1:
        raise BudgetError(_too_small(info, one, n_hallucinators, single_channel, basis_size))
    return plan(info, kind, int(n), n_hallucinators, single_channel, basis_size, budget_ipc)


def _too_small(info: DatasetInfo, one: Plan, k: int, single_channel: bool, basis_size: int | None) -> str:
    msg = (
        f"A budget of IPC {one.budget_ipc:g} ({one.budget_floats:,} floats) cannot hold one basis per class "
        f"({one.floats_bases:,} floats) plus {k} hallucinator(s) ({one.floats_hallucinators:,} floats)."
    )
    options = []
    for kk in range(k - 1, 0, -1):
        if solve_or_none(info, "haba", one.budget_ipc, kk, single_channel, basis_size):
            options.append(f"use n_hallucinators={kk}")
            break
    for size in range((basis_size or info.im_size[0]) - 1, 3, -1):
        p = solve_or_none(info, "haba", one.budget_ipc, k, single_channel, size)
        if p:
            options.append(f"store smaller bases (synset.basis_size={size} fits {p.n_bases} per class)")
            break
    needed = one.floats_total / (info.num_classes * one.image_floats)
    options.append(f"raise budget_ipc to at least {needed:.2f}")
    options.append("or set synset.n_bases explicitly to run over budget (storage is still reported)")
    return msg + " Options: " + "; ".join(options) + "."


def solve_or_none(info, kind, budget_ipc, n_hallucinators=5, single_channel=False, basis_size=None) -> Plan | None:
    try:
        return solve(info, kind, budget_ipc, n_hallucinators, single_channel, basis_size)
    except BudgetError:
        return None


def plan_from_config(info: DatasetInfo, cfg) -> Plan:
    """The synset plan a :class:`SynsetConfig` asks for: explicit ``n_bases`` wins, else the budget solve."""
    if cfg.kind not in ("pixels", "haba"):
        raise ConfigError(f"Unknown synset {cfg.kind!r}. Valid choices: haba, pixels.")
    if cfg.n_bases is not None:
        if cfg.n_bases < 1:
            raise ConfigError(f"synset.n_bases must be >= 1, got {cfg.n_bases}.")
        return plan(
            info, cfg.kind, cfg.n_bases, cfg.n_hallucinators, cfg.single_channel, cfg.basis_size, cfg.budget_ipc
        )
    if cfg.budget_ipc is None:
        raise ConfigError("Set synset.budget_ipc (storage budget) or synset.n_bases (bases per class).")
    return solve(info, cfg.kind, cfg.budget_ipc, cfg.n_hallucinators, cfg.single_channel, cfg.basis_size)
