"""The storage record: what a synthetic set keeps to be rebuilt, in floats, against plain images.

One record for every producer: the budget solver's plan (``haba_core.budget.Plan`` is a :class:`Storage` with what
the solver adds), a built set (``Synset.storage()``) and the random-real baseline (:func:`random_real_storage`).
:meth:`Storage.to_dict` is the one JSON shape of storage, in a run folder's ``storage.json`` and ``status.json``, a
synset file's metadata, evaluation results (``"storage"``) and the bench's cells. A budget is in IPC-equivalents:
``budget_ipc * classes * C * H * W`` floats, the storage of ``budget_ipc`` plain images per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Storage:
    """What a synthetic set stores: bases, shared hallucinator parameters and fixed masks (FreD's per-class
    frequency choice), in float32-equivalents; labels are implied by the class-major layout and cost nothing."""

    kind: str  # a registered synset kind, or "random_real"
    n_bases: int  # per class
    n_hallucinators: int
    basis_shape: tuple[int, int, int]  # (C_b, h, w)
    images_per_class: int  # training images the set yields per class (every basis x hallucinator pair)
    num_classes: int
    image_floats: int  # C * H * W of one real image
    floats_bases: int
    floats_hallucinators: int = 0
    floats_masks: int = 0  # fixed, non-learned data beside the bases
    budget_ipc: float | None = None  # the budget it was planned for; None: none (a built set does not know one)
    label: str = ""  # what the set ran as, when a kind names its options (FreD's selection)
    basis_note: str = ""  # set when basis_size="auto" chose a smaller size: what it chose and why

    @property
    def images_total(self) -> int:
        return self.images_per_class * self.num_classes

    @property
    def floats_total(self) -> int:
        return self.floats_bases + self.floats_hallucinators + self.floats_masks

    @property
    def ipc_equivalent(self) -> float:
        return self.floats_total / (self.num_classes * self.image_floats)

    @property
    def budget_floats(self) -> int | None:
        return None if self.budget_ipc is None else int(self.budget_ipc * self.num_classes * self.image_floats)

    @property
    def budget_used(self) -> float | None:
        return None if self.budget_floats is None else self.floats_total / self.budget_floats

    def to_dict(self) -> dict[str, Any]:
        """The JSON of storage: every count, ``floats_total`` and ``ipc_equivalent``; ``label``, ``basis_note``
        and the budget's ``budget_ipc``, ``budget_floats`` and ``budget_used`` only when the record has them."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.label:
            out["label"] = self.label
        out.update(
            n_bases=self.n_bases,
            n_hallucinators=self.n_hallucinators,
            images_per_class=self.images_per_class,
            images_total=self.images_total,
            basis_shape=list(self.basis_shape),
            floats_bases=self.floats_bases,
            floats_hallucinators=self.floats_hallucinators,
            floats_masks=self.floats_masks,
            floats_total=self.floats_total,
            ipc_equivalent=self.ipc_equivalent,
        )
        if self.budget_ipc is not None:
            out.update(budget_ipc=self.budget_ipc, budget_floats=self.budget_floats, budget_used=self.budget_used)
        if self.basis_note:
            out["basis_note"] = self.basis_note
        return out


def random_real_storage(info, ipc: int) -> Storage:
    """The storage of ``ipc`` real images per class of a dataset (``info``: its ``DatasetInfo``), the random-real
    baseline's: the same record as a synthetic set's."""
    c, h, w = info.channels, *info.im_size
    return Storage(
        kind="random_real",
        n_bases=ipc,
        n_hallucinators=0,
        basis_shape=(c, h, w),
        images_per_class=ipc,
        num_classes=info.num_classes,
        image_floats=c * h * w,
        floats_bases=ipc * info.num_classes * c * h * w,
    )
