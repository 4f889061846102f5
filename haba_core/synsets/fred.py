"""Frequency-domain synset: each image stored as its lowest-frequency DCT coefficients.

In the spirit of FreD (Shin et al., "Frequency Domain-based Dataset Distillation", NeurIPS 2023): an image is
kept as the top-left ``k x k`` block of its orthonormal 2-D DCT-II per channel, and rendered by the inverse
DCT with every other coefficient zero. Each image then costs ``C * k * k`` floats instead of ``C * H * W``, so
a budget holds ``(H / k)^2`` times as many (smooth) images. FreD picks coefficients by their explained
variance on the real data; this kind keeps the lowest frequencies, which is the same choice for natural
images up to ordering and needs no statistics.

``basis_size`` is ``k``, the frequencies kept per side (``None``: all of them, a lossless change of basis);
``basis_size="auto"`` starts at half the side (4x the images of pixels at equal storage). Storage is the
coefficients alone, the same formula as pixels stored at ``k x k``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from haba_core.synsets.base import SYNSETS, Synset


def dct_matrix(n: int, k: int | None = None) -> Tensor:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n``: ``D[i, t] = a_i cos(pi (2t+1) i / 2n)``
    with ``a_0 = sqrt(1/n)``, ``a_i = sqrt(2/n)``; ``D @ x`` transforms, ``D.T @ X`` inverts (all rows kept)."""
    k = n if k is None else k
    i = torch.arange(k, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * t + 1) * i / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


@SYNSETS.register("fred")
class FrequencySynset(Synset):
    """``n_bases`` images per class, each stored as its lowest ``k x k`` DCT coefficients (k = basis_size)."""

    kind = "fred"
    label = "FreD (DCT)"
    help = "each image as its lowest-frequency DCT coefficients (more, smoother images per budget)"
    auto_min_factor = 2

    def __init__(self, info, n_bases: int, basis_size: int | None = None, generator=None):
        h, w = info.im_size
        if basis_size is not None and not 1 <= int(basis_size) <= min(h, w):
            raise ValueError(f"fred keeps k x k frequencies with 1 <= k <= {min(h, w)}, got basis_size={basis_size}")
        super().__init__(info, n_bases, basis_size)
        kh, kw = self.basis_hw
        # (k, H) and (k, W): coefficients (.., kh, kw) -> image (.., H, W) is rows.T @ X @ cols
        self.register_buffer("dct_rows", dct_matrix(h, kh), persistent=False)
        self.register_buffer("dct_cols", dct_matrix(w, kw), persistent=False)

    def render(self, bases: Tensor, variant: Tensor | None) -> Tensor:
        return torch.einsum("ih,bcij,jw->bchw", self.dct_rows, bases, self.dct_cols)

    def coefficients(self, images: Tensor) -> Tensor:
        """The kept low-frequency block (B, C, kh, kw) of images (B, C, H, W)."""
        return torch.einsum("ih,bchw,jw->bcij", self.dct_rows, images, self.dct_cols)

    def display_bases(self, idx: Tensor) -> Tensor:
        return self.render(self.bases[idx], None)  # coefficients mean little to the eye: show the image

    def init_from_real(self, dataset, generator: torch.Generator | None = None) -> None:
        """Each set image starts as a random real image of its class, low-pass filtered to the kept block."""
        with torch.no_grad():
            for c in range(self.num_classes):
                real = dataset.sample_class(c, self.n_bases, generator).to(self.bases.device)
                self.bases[self.class_indices(c)] = self.coefficients(real)
