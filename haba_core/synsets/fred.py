"""Frequency-domain synset: FreD (Shin et al., "Frequency Domain-based Dataset Distillation", NeurIPS 2023).

Each image is stored as ``k * k`` coefficients per channel of its orthonormal 2-D DCT-II, and rendered by the
inverse DCT with every other coefficient zero. An image then costs ``C * k * k`` floats instead of
``C * H * W``, so a budget holds ``H * W / k^2`` times as many images. Which ``k * k`` positions an image keeps
is ``selection``:

- ``"variance"`` (default, FreD's): per class, the positions whose coefficient varies most over the class's
  initial images. As the official code (``init_mask`` in ``DM/main_DM_FreD.py``), the images are the real
  training images the set is initialised from (``n_bases`` per class, drawn by :meth:`init_from_real`), the
  coefficients are averaged over channels before the variance is taken, and one mask serves every channel and
  every image of the class. FreD ranks by explained-variance ratio (a coefficient's variance over their sum),
  which orders positions as the variance does, of its unnormalised DCT (``norm=None``), whose first row and
  column weigh more than in the orthonormal one; the ranking here uses that scaling (on Fashion-MNIST the
  orthonormal variance would pick 1-11 of 196 positions per class differently), while the stored coefficients
  are orthonormal (the same images; only their scale, hence the learning rate, differs from FreD's).
  Two differences: ties (a class with a single image has no
  variance at all) go to the lowest frequencies, so one image per class keeps the low-pass square; and the
  masks are stored and counted (below), where FreD's budget counts only the coefficients.
- ``"lowpass"``: the top-left ``k x k`` block for every class, needing no statistics. It is not FreD's choice:
  on Fashion-MNIST, FreD's masks share 45-79% of the 14x14 square and 33-65% of the 7x7 one, class by class.

``basis_size`` is ``k`` (``None``: every position, a lossless change of basis); ``basis_size="auto"`` starts
at half the side. Storage: the coefficients, plus, for ``"variance"`` with ``k`` below full size, each class's
mask as a bit-packed ``H * W``-bit map (``ceil(H * W / 8)`` bytes per class, counted as float32-equivalents:
245 floats for Fashion-MNIST, 320 for CIFAR-10). The file holds exactly those bytes (``mask_bits``). The
masks come from training images only (``Dataset.sample_class``); a set initialised from noise has no real
images to rank, so it must use ``"lowpass"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from haba_core.errors import ConfigError
from haba_core.options import option
from haba_core.synsets.base import SYNSETS, Synset

SELECTIONS = {"variance": "FreD (DCT, variance)", "lowpass": "FreD (DCT, low-pass)"}  # option -> label


def dct_matrix(n: int, k: int | None = None) -> Tensor:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n``: ``D[i, t] = a_i cos(pi (2t+1) i / 2n)``
    with ``a_0 = sqrt(1/n)``, ``a_i = sqrt(2/n)``; ``D @ x`` transforms, ``D.T @ X`` inverts (all rows kept)."""
    k = n if k is None else k
    i = torch.arange(k, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * t + 1) * i / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def lowpass_order(h: int, w: int) -> Tensor:
    """Flat positions ``u * w + v`` of an (h, w) spectrum by ``max(u, v)``, then ``u``, then ``v``: for every k,
    the first ``k * k`` are the top-left ``k x k`` square. (h * w,) int64."""
    u, v = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return torch.argsort((torch.maximum(u, v) * h * w + u * w + v).flatten())


def variance_positions(images: Tensor, count: int) -> Tensor:
    """FreD's mask for one class: the ``count`` DCT positions whose channel-mean coefficient has the highest
    variance over ``images`` (n, C, H, W), measured in FreD's unnormalised DCT; ties go to lower frequencies
    (:func:`lowpass_order`). (count,) flat positions ``u * W + v``, ascending."""
    _, _, h, w = images.shape
    dh, dw = dct_matrix(h).double().to(images.device), dct_matrix(w).double().to(images.device)
    spectrum = torch.einsum("uh,nchw,vw->nuv", dh, images.double(), dw) / images.shape[1]  # channel mean
    # FreD's DCT (scipy's norm=None) is the orthonormal one times sqrt(2N), and times 2 sqrt(N) on index 0:
    # relative to the rest, a coefficient's variance there is 2x per zero index (4x at the DC term)
    weight = (1.0 + (torch.arange(h) == 0).double())[:, None] * (1.0 + (torch.arange(w) == 0).double())[None, :]
    var = spectrum.flatten(1).var(0, correction=0) * weight.flatten().to(images.device)  # (H * W,)
    order = lowpass_order(h, w).to(images.device)
    return order[torch.argsort(-var[order], stable=True)[:count]].sort().values


def pack_bits(mask: Tensor) -> Tensor:
    """(K, P) bool -> (K, ceil(P / 8)) uint8, position p at bit ``p % 8`` of byte ``p // 8``."""
    k, p = mask.shape
    m = F.pad(mask.to(torch.uint8), (0, -p % 8)).view(k, -1, 8)
    return (m << torch.arange(8, dtype=torch.uint8, device=mask.device)).sum(-1).to(torch.uint8)


def unpack_bits(bits: Tensor, p: int) -> Tensor:
    """The inverse of :func:`pack_bits`: (K, ceil(P / 8)) uint8 -> (K, P) bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return ((bits[..., None] >> shifts) & 1).flatten(1)[:, :p].bool()


@dataclass(frozen=True)
class FredOptions:
    selection: str = option(
        "variance",
        help="variance: per class, FreD's highest-variance DCT positions; lowpass: the k x k lowest frequencies",
        choices=tuple(SELECTIONS),
    )


@SYNSETS.register("fred")
class FrequencySynset(Synset):
    """``n_bases`` images per class, each stored as ``k * k`` DCT coefficients per channel (k = basis_size) at
    its class's positions. ``bases`` (N, C, k, k) holds them in ascending position order."""

    kind = "fred"
    label = "FreD (DCT)"
    help = "each image as k x k DCT coefficients, per class those of highest variance (more images per budget)"
    Config = FredOptions
    auto_min_factor = 2

    @classmethod
    def storage_of(cls, info, n_bases, basis_size, selection: str = "variance", **_):
        s = super().storage_of(info, n_bases, basis_size)
        h, w = info.im_size
        if selection == "variance" and basis_size and basis_size * basis_size < h * w:
            s["floats_masks"] = math.ceil(info.num_classes * math.ceil(h * w / 8) / 4)  # bytes of the bit maps
        return s

    def __init__(self, info, n_bases: int, basis_size: int | None = None, selection: str = "variance", generator=None):
        h, w = info.im_size
        if basis_size is not None and not 1 <= int(basis_size) <= min(h, w):
            raise ValueError(f"fred keeps k x k frequencies with 1 <= k <= {min(h, w)}, got basis_size={basis_size}")
        self.make_options({"selection": selection})  # a bad selection fails here, as in a config
        super().__init__(info, n_bases, basis_size)
        self.selection = selection
        self.label = SELECTIONS[selection]
        self.register_buffer("dct_h", dct_matrix(h), persistent=False)  # (H, H): image = D_h.T @ X @ D_w
        self.register_buffer("dct_w", dct_matrix(w), persistent=False)
        # (K, k*k) flat positions each class keeps, ascending; derived from mask_bits, which the file stores
        self.register_buffer("positions", self._square().repeat(self.num_classes, 1), persistent=False)
        self.register_buffer("mask_bits", torch.zeros(self.num_classes, math.ceil(h * w / 8), dtype=torch.uint8))
        self._positions_changed()

    def _square(self) -> Tensor:
        """(k*k,) flat positions of the top-left k x k block, ascending."""
        kh, kw = self.basis_hw
        return (torch.arange(kh)[:, None] * self.info.im_size[1] + torch.arange(kw)[None, :]).flatten()

    def _positions_changed(self) -> None:
        h, w = self.info.im_size
        mask = torch.zeros(self.num_classes, h * w, dtype=torch.bool, device=self.positions.device)
        self.mask_bits.copy_(pack_bits(mask.scatter_(1, self.positions, True)))
        self._shared = bool((self.positions == self.positions[:1]).all())

    def config(self) -> dict:
        return {**super().config(), "selection": self.selection}

    def mask_floats(self) -> int:
        h, w = self.info.im_size
        kh, kw = self.basis_hw
        needed = self.selection == "variance" and kh * kw < h * w
        return math.ceil(self.mask_bits.numel() / 4) if needed else 0

    def _row_positions(self, classes: Tensor | None, b: int) -> Tensor:
        if classes is not None:
            return self.positions[classes]
        if not self._shared:
            raise ValueError(
                "fred with selection='variance' keeps different frequencies per class: render needs the rows' "
                "classes (render(bases, variant, classes), or images_of(idx), which passes them)."
            )
        return self.positions[:1].expand(b, -1)

    def render(self, bases: Tensor, variant: Tensor | None, classes: Tensor | None = None) -> Tensor:
        """Coefficients (B, C, k, k) of rows of ``classes`` (B,) -> images (B, C, H, W): each row's coefficients
        at its class's positions, zero elsewhere, then the inverse DCT. ``classes`` may be omitted only when
        every class keeps the same positions (``"lowpass"``)."""
        b, c = bases.shape[:2]
        h, w = self.info.im_size
        pos = self._row_positions(classes, b)[:, None, :].expand(b, c, -1)  # (B, C, k*k)
        full = bases.new_zeros(b, c, h * w).scatter(2, pos, bases.flatten(2)).view(b, c, h, w)
        return torch.einsum("uh,bcuv,vw->bchw", self.dct_h, full, self.dct_w)

    def coefficients(self, images: Tensor, classes: Tensor | None = None) -> Tensor:
        """The kept coefficients (B, C, k, k) of images (B, C, H, W) of ``classes`` (B,)."""
        b, c = images.shape[:2]
        pos = self._row_positions(classes, b)[:, None, :].expand(b, c, -1)
        full = torch.einsum("uh,bchw,vw->bcuv", self.dct_h, images, self.dct_w).flatten(2)
        return full.gather(2, pos).view(b, c, *self.basis_hw)

    def images_of(self, idx: Tensor, variant: Tensor | None = None, generator=None) -> tuple[Tensor, Tensor]:
        if variant is None:
            variant = self.random_variants(len(idx), generator)  # drawn as every kind does: same RNG stream
        labels = self.labels_base[idx]
        return self.render(self.bases[idx], variant, labels), labels

    def display_bases(self, idx: Tensor) -> Tensor:
        return self.render(self.bases[idx], None, self.labels_base[idx])  # coefficients mean little to the eye

    def init_from_real(self, dataset, generator: torch.Generator | None = None) -> None:
        """Each image starts as a random real training image of its class, reduced to the kept coefficients;
        with ``"variance"``, each class's positions are first chosen on those images (FreD)."""
        kh, kw = self.basis_hw
        with torch.no_grad():
            for c in range(self.num_classes):
                real = dataset.sample_class(c, self.n_bases, generator).to(self.bases.device)  # (n, C, H, W)
                if self.selection == "variance":
                    self.positions[c] = variance_positions(real, kh * kw)
                classes = torch.full((len(real),), c, device=real.device)
                self.bases[self.class_indices(c)] = self.coefficients(real, classes)
            self._positions_changed()

    def init_noise(self, generator: torch.Generator | None = None) -> None:
        if self.selection == "variance":
            raise ConfigError(
                "fred's selection='variance' picks each class's frequencies on its initial real images; use "
                "synset.init=real, or synset.selection=lowpass with synset.init=noise."
            )
        super().init_noise(generator)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "mask_bits"
        if key not in state_dict:  # written before selections existed: every class kept the low-pass square
            self.selection, self.label = "lowpass", SELECTIONS["lowpass"]
            self.positions.copy_(self._square().expand_as(self.positions))
            self._positions_changed()
            state_dict[key] = self.mask_bits.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        h, w = self.info.im_size
        mask = unpack_bits(self.mask_bits, h * w)
        if not (mask.sum(1) == self.positions.shape[1]).all():
            raise RuntimeError(f"mask_bits must mark {self.positions.shape[1]} positions per class")
        self.positions.copy_(mask.nonzero()[:, 1].view_as(self.positions))
        self._shared = bool((self.positions == self.positions[:1]).all())
