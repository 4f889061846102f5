"""The synthetic-set interface shared by every parameterization (plain pixels, HaBa, frequency domain).

A synset stores ``n_bases`` learnable images per class (at ``basis_size`` resolution) and, for HaBa, the
hallucinators that turn each basis into several training images. Everything a method or the evaluator
needs goes through four calls:

- ``sample(batch, generator)``: a differentiable random mini-batch ``(images (B, C, H, W), labels (B,))``;
- ``class_images(c, generator)``: differentiable images of class ``c`` (one per basis);
- ``materialize(generator, pairing)``: the whole set, for evaluation and export;
- ``storage()``: what the set stores, in floats, against the IPC-equivalent of plain pixels (a
  :class:`~haba_core.storage.Storage`, the record the budget plan is too).

A kind is one module in this package that registers a ``Synset`` subclass with ``@SYNSETS.register``; the
package imports every module in it, so a new file is all a new kind needs. The class says what the rest of the
workbench must know about it: ``label``/``help`` (app, CLI), ``Config`` (a frozen dataclass of its own
options, set as ``synset.params`` or by the shorthand ``synset.<option>``; the CLI, the app and the budget
solver read it), ``storage_of`` (its storage formula, which the budget solver uses before anything is built),
``variant_name`` (what one rendering of a basis is called), ``contrastive``
(whether HaBa's adversarial constraint applies) and ``auto_min_factor`` (where ``basis_size="auto"`` starts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haba_core.data import DatasetInfo
from haba_core.io import FORMAT_VERSION, load_tensors, save_tensors
from haba_core.registry import Registry
from haba_core.storage import Storage
from haba_core.validate import checked_fields

SYNSETS: Registry = Registry("synset")
SYNSET_FORMAT = "haba-synset"
EXPORT_FORMAT = "haba-images"  # every image a set yields (haba export)


def upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (B, C, h, w) -> (B, C, *size); identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class NoOptions:
    """The options of a kind that has none beyond ``n_bases`` and ``basis_size``."""


class Synset(nn.Module):
    """Base class: learnable bases with fixed class labels, stored at ``basis_size``."""

    kind = "base"
    label = ""  # how front ends name the kind (default: its registry key)
    help = ""  # one line for the app and the CLI
    Config: type = NoOptions  # frozen dataclass of the kind's own options (passed to __init__ by name)
    variant_name = "image"  # what one rendering of a basis is called ("hallucinator" for HaBa)
    contrastive = False  # HaBa's adversarial contrastive constraint applies to this kind
    auto_min_factor = 1  # basis_size="auto" tries H / auto_min_factor first (1: full size when it fits)
    # basis_size="auto" where a validation search chose the size: {(C, H, W): {budget_ipc: (size or None for full
    # size, the search's results file)}}; other shapes and budgets follow the rule above
    validated_basis_sizes: dict = {}
    # synset.lr_hallucinators unset: the lr a validation search chose, {(C, H, W): {(method, budget_ipc): (lr, the
    # search's results file)}}; elsewhere the method's own default
    validated_lr_hallucinators: dict = {}
    n_hallucinators = 0  # learned networks shared by all bases (HaBa's hallucinators)

    def __init__(self, info: DatasetInfo, n_bases: int, basis_size: int | None = None, basis_channels=None):
        super().__init__()
        self.info = info
        self.n_bases = int(n_bases)
        h, w = info.im_size
        self.basis_size = int(basis_size) if basis_size else None
        self.basis_hw = (self.basis_size, self.basis_size) if self.basis_size else (h, w)
        self.basis_channels = int(basis_channels or info.channels)
        n = info.num_classes * self.n_bases
        # (N, C_b, h_b, w_b), class-major: bases of class c are rows c*n_bases ... (c+1)*n_bases - 1
        self.bases = nn.Parameter(torch.randn(n, self.basis_channels, *self.basis_hw))
        self.register_buffer("labels_base", torch.arange(info.num_classes).repeat_interleave(self.n_bases))
        self.extra: dict[str, Any] = {}  # small JSON-able facts saved with the set (e.g. MTT's learned lr)

    # -- shapes -------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.info.channels, *self.info.im_size)

    @property
    def images_per_class(self) -> int:
        return self.n_bases * self.n_variants

    @property
    def n_variants(self) -> int:
        """Training images each basis yields (1 for pixels, n_hallucinators for HaBa)."""
        return 1

    # -- what the kind is, before anything is built ---------------------------------------------------------
    @classmethod
    def validated_lr(cls, info: DatasetInfo, method: str, budget_ipc: float | None) -> tuple[float, str] | None:
        """(lr, results file) where a validation search chose the hallucinators' lr for this method, image shape
        and budget, else None."""
        table = cls.validated_lr_hallucinators.get((info.channels, *info.im_size), {})
        hit = (
            v for (m, b), v in table.items() if m == method and budget_ipc is not None and abs(b - budget_ipc) < 1e-9
        )
        return next(hit, None)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Config))

    @classmethod
    def make_options(cls, params: Mapping[str, Any] | None = None, prefix: str = "synset.", also=()) -> Any:
        """This kind's ``Config`` from ``params`` (``synset.params``), every value checked.

        Options that belong to another registered kind are dropped (a config layered from a HaBa preset may
        switch to pixels); a name no kind knows is an error with close matches (among ``also`` too)."""
        others = all_option_names()
        what = ", ".join(f.name for f in dataclasses.fields(cls.Config)) or "none"

        def unknown(key: str, hint: str) -> str:
            return f"Unknown synset option {prefix}{key} for the {cls.kind!r} kind.{hint} Its options: {what}."

        return cls.Config(**checked_fields(cls.Config, params, prefix, unknown, skip=others, also=[*others, *also]))

    @classmethod
    def options_from(cls, cfg) -> dict[str, Any]:
        """This kind's constructor options, defaults filled in, from a :class:`~haba_core.config.SynsetConfig`
        (its ``params``) or a plain mapping of options."""
        params = cfg if isinstance(cfg, Mapping) else getattr(cfg, "params", {})
        return dataclasses.asdict(cls.make_options(params))

    @classmethod
    def storage_of(cls, info: DatasetInfo, n_bases: int, basis_size: int | None, **options: Any) -> dict:
        """What ``n_bases`` per class would store: ``basis_shape`` (C_b, h, w), ``floats_bases``,
        ``n_hallucinators``, ``floats_hallucinators`` (shared parameters) and ``floats_masks`` (fixed data that
        is not learned, such as FreD's per-class frequency masks; 0 when left out). Options of other kinds are
        ignored. Must agree with :meth:`storage` of a built set (tests check every kind)."""
        h, w = (basis_size, basis_size) if basis_size else tuple(info.im_size)
        c = info.channels
        return {
            "basis_shape": (c, h, w),
            "floats_bases": n_bases * info.num_classes * c * h * w,
            "n_hallucinators": 0,
            "floats_hallucinators": 0,
            "floats_masks": 0,
        }

    # -- what subclasses implement ------------------------------------------------------------------------
    def render(self, bases: Tensor, variant: Tensor | None) -> Tensor:
        """Turn bases (B, C_b, h_b, w_b) and per-row variant indices (B,) into images (B, C, H, W)."""
        raise NotImplementedError

    def hallucinator_floats(self) -> int:
        return 0

    def mask_floats(self) -> int:
        """Floats-equivalent of fixed, non-learned data the set stores beside its parameters (FreD's masks)."""
        return 0

    def display_bases(self, idx: Tensor) -> Tensor:
        """What viewers show as bare bases ``idx`` (B, C_b, h, w): the stored tensors, for image-space kinds."""
        return self.bases[idx]

    def config(self) -> dict:
        return {"n_bases": self.n_bases, "basis_size": self.basis_size}

    def param_groups(self, lr_images: float, lr_hallucinators: float) -> list[dict]:
        return [{"params": [self.bases], "lr": lr_images, "name": "bases"}]

    # -- sampling -----------------------------------------------------------------------------------------
    def random_variants(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randint(self.n_variants, (n,), generator=generator).to(self.bases.device)

    def images_of(self, idx: Tensor, variant: Tensor | None = None, generator=None) -> tuple[Tensor, Tensor]:
        """Images and labels of bases ``idx`` (B,), each with ``variant`` (B,) or a random one."""
        if variant is None:
            variant = self.random_variants(len(idx), generator)
        return self.render(self.bases[idx], variant), self.labels_base[idx]

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A random mini-batch of min(batch, N) distinct bases, each with a random variant."""
        n = self.bases.shape[0]
        idx = torch.randperm(n, generator=generator)[: min(batch, n)].to(self.bases.device)
        return self.images_of(idx, generator=generator)

    def class_indices(self, c: int) -> Tensor:
        return torch.arange(c * self.n_bases, (c + 1) * self.n_bases, device=self.bases.device)

    def class_images(self, c: int, generator: torch.Generator | None = None) -> Tensor:
        """(n_bases, C, H, W): every basis of class c, each with a random variant."""
        return self.images_of(self.class_indices(c), generator=generator)[0]

    def materialize(self, generator: torch.Generator | None = None, pairing: str = "all") -> tuple[Tensor, Tensor]:
        """The whole set. ``pairing="all"``: every basis x every variant; ``"random"``: one variant per basis."""
        n = self.bases.shape[0]
        idx = torch.arange(n, device=self.bases.device)
        if pairing == "random" or self.n_variants == 1:
            return self.images_of(idx, generator=generator)
        if pairing != "all":
            raise ValueError(f"pairing must be 'all' or 'random', not {pairing!r}")
        idx = idx.repeat(self.n_variants)
        variant = torch.arange(self.n_variants, device=idx.device).repeat_interleave(n)
        return self.images_of(idx, variant)

    # -- storage ------------------------------------------------------------------------------------------
    def storage(self) -> Storage:
        """What the set stores, counted from its tensors (the budget plan's formula must agree: a test checks)."""
        c, h, w = self.image_shape
        return Storage(
            kind=self.kind,
            n_bases=self.n_bases,
            n_hallucinators=self.n_hallucinators,
            basis_shape=(self.basis_channels, *self.basis_hw),
            images_per_class=self.images_per_class,
            num_classes=self.num_classes,
            image_floats=c * h * w,
            floats_bases=self.bases.numel(),
            floats_hallucinators=self.hallucinator_floats(),
            floats_masks=self.mask_floats(),
            label=self.label or self.kind,  # what the set ran as (a kind may name its options, e.g. FreD's)
        )

    # -- files --------------------------------------------------------------------------------------------
    def to_meta(self) -> dict:
        return {
            "format": SYNSET_FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "dataset": self.info.to_dict(),
            "config": self.config(),
            "extra": self.extra,
            "storage": self.storage().to_dict(),
        }

    def save(self, path, meta: dict | None = None) -> None:
        """Write the set to one safetensors file that rebuilds it alone (see :func:`load_synset`)."""
        save_tensors(path, self.state_dict(), {**self.to_meta(), **(meta or {})})

    def export(self, path, source: str = "") -> int:
        """Write every image the set yields, ``images`` (N, C, H, W) and ``labels`` (N,), to one safetensors file
        (format ``haba-images``, with the dataset's facts); returns N."""
        images, labels = self.materialize(pairing="all")
        meta = {"format": EXPORT_FORMAT, "version": FORMAT_VERSION, "dataset": self.info.to_dict(), "source": source}
        save_tensors(path, {"images": images, "labels": labels}, meta)
        return len(images)

    def init_from_real(self, dataset, generator: torch.Generator | None = None) -> None:
        """Initialise every basis from a random real image of its class (channel mean if single-channel)."""
        with torch.no_grad():
            for c in range(self.num_classes):
                real = dataset.sample_class(c, self.n_bases, generator).to(self.bases.device)  # (n, C, H, W)
                if self.basis_channels == 1 and real.shape[1] != 1:
                    real = real.mean(dim=1, keepdim=True)
                real = (
                    F.interpolate(real, size=self.basis_hw, mode="area") if real.shape[-2:] != self.basis_hw else real
                )
                self.bases[self.class_indices(c)] = real

    def init_noise(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.bases.copy_(torch.randn(self.bases.shape, generator=generator))


def create_synset(kind: str, info: DatasetInfo, **kwargs) -> Synset:
    return SYNSETS.create(kind, info, **kwargs)


def list_synsets() -> list[str]:
    return SYNSETS.list()


def option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every registered kind's own options, each once: ``{name: (its dataclass field, [kinds that take it])}``."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for kind in SYNSETS.list():
        for f in dataclasses.fields(SYNSETS.get(kind).Config):
            out.setdefault(f.name, (f, []))[1].append(kind)
    return out


def all_option_names() -> set[str]:
    """Every option some registered kind declares (its ``Config`` fields)."""
    return set(option_fields())


def load_synset(path, device: str | torch.device = "cpu") -> Synset:
    """Rebuild a synset from its file alone."""
    tensors, meta = load_tensors(path, expect_format=SYNSET_FORMAT)
    from haba_core.errors import CheckpointError

    try:
        info = DatasetInfo.from_dict(meta["dataset"])
        synset = create_synset(meta["kind"], info, **meta["config"])
        synset.load_state_dict(tensors)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is a synset file but does not match its own description: {e}") from e
    synset.extra = dict(meta.get("extra") or {})
    return synset.to(device)


def fan_in_uniform_(t: Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    """PyTorch's default conv init (kaiming-uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=generator) * 2 * bound - bound)
