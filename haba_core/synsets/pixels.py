"""Plain synthetic images: the parameterization of DC, DSA, DM and MTT (one learnable image per entry)."""

from __future__ import annotations

from torch import Tensor

from haba_core.synsets.base import SYNSETS, Synset, upsample_to


@SYNSETS.register("pixels")
class PixelSynset(Synset):
    """``n_bases`` images per class, stored at ``basis_size`` (default: full resolution)."""

    kind = "pixels"
    label = "Pixels"
    help = "plain images"

    def __init__(self, info, n_bases: int, basis_size: int | None = None, generator=None):
        super().__init__(info, n_bases, basis_size)

    def render(self, bases: Tensor, variant: Tensor | None) -> Tensor:
        return upsample_to(bases, self.info.im_size)
