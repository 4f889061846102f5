"""The ``toy`` dataset: generated from a fixed seed, nothing on disk, identical on every machine and learnable by a
ConvNet in a few epochs (tests and demos). Registered like the file-backed sources (``haba_core.data.sources``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from haba_core.data.datasets import DATASETS
from haba_core.data.raw import DatasetInfo, RawSplits
from haba_core.errors import ConfigError


@lru_cache(maxsize=8)
def _generate_toy(
    channels: int, size: tuple[int, int], num_classes: int, n_train: int, n_test: int, noise: float, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class c is an oriented sinusoidal grating (angle, frequency fixed by c) plus a Gaussian blob at a
    class-specific place, tinted per class on RGB. Each image draws its own phase, contrast, blob jitter,
    brightness and pixel noise, so a classifier must learn orientation/frequency/position, not memorize pixels.
    Returns uint8 images (N, C, H, W) and int64 labels, train then test, each shuffled."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    k = num_classes
    cls = torch.arange(k, dtype=torch.float64)
    angle = math.pi * cls / k  # K evenly spaced orientations
    freq = 2.0 + (cls % 3)  # cycles per image; neighbours in angle differ in frequency too
    spot = 2 * math.pi * ((cls * 3) % k) / k
    blob_x, blob_y = 0.5 * torch.cos(spot), 0.5 * torch.sin(spot)
    ch = torch.arange(channels, dtype=torch.float64)
    tint = 0.65 + 0.35 * torch.cos(2 * math.pi * (cls[:, None] / k + ch[None, :] / max(channels, 1)))  # (K, C)
    if channels == 1:
        tint = torch.ones(k, 1, dtype=torch.float64)
    ys = torch.linspace(-1, 1, h, dtype=torch.float64).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=torch.float64).view(1, 1, w)

    def make(n_per_class: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(k).repeat_interleave(n_per_class)  # (N,)
        n = labels.numel()
        phase = torch.rand(n, generator=g, dtype=torch.float64).view(n, 1, 1) * 2 * math.pi
        contrast = 0.6 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64).view(n, 1, 1)
        jitter = 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        bright = 0.05 * torch.randn(n, generator=g, dtype=torch.float64).view(n, 1, 1, 1)
        pixel_noise = noise * torch.randn(n, channels, h, w, generator=g, dtype=torch.float64)
        a, f = angle[labels].view(n, 1, 1), freq[labels].view(n, 1, 1)
        proj = xs * torch.cos(a) + ys * torch.sin(a)  # (N, H, W), in [-sqrt 2, sqrt 2]
        grating = torch.sin(math.pi * f * proj + phase) * contrast
        bx = (blob_x[labels] + jitter[:, 0]).view(n, 1, 1)
        by = (blob_y[labels] + jitter[:, 1]).view(n, 1, 1)
        blob = torch.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * 0.25**2))
        pattern = 0.22 * grating + 0.3 * blob - 0.1  # (N, H, W)
        img = 0.5 + pattern.unsqueeze(1) * tint[labels].view(n, channels, 1, 1) + bright + pixel_noise
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        order = torch.randperm(n, generator=g)
        return img[order].contiguous(), labels[order]

    return (*make(n_train), *make(n_test))


@DATASETS.register("toy", label="toy", help="generated, for tests and demos (seconds)")
@dataclass(frozen=True)
class Toy:
    """A small generated dataset for tests and demos, identical on every machine (fixed seed), learnable by a
    ConvNet in a few epochs. Options: channels, im_size (int or (H, W)), num_classes, n_per_class (train),
    n_test_per_class, noise (pixel noise std, on the [0, 1] scale), seed."""

    channels: int = 1
    im_size: int | tuple[int, int] = 28
    num_classes: int = 10
    n_per_class: int = 60
    n_test_per_class: int = 20
    noise: float = 0.15
    seed: int = 0
    _size: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = (self.im_size, self.im_size) if isinstance(self.im_size, int) else tuple(self.im_size)
        if len(size) != 2 or min(size) < 4:
            raise ConfigError(f"toy im_size must be an int or (H, W) of at least 4, got {self.im_size!r}")
        if self.channels < 1 or self.num_classes < 2 or self.n_per_class < 1 or self.n_test_per_class < 1:
            raise ConfigError("toy needs channels >= 1, num_classes >= 2 and at least one image per class")
        object.__setattr__(self, "_size", (int(size[0]), int(size[1])))

    def _generate(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _generate_toy(
            self.channels,
            self._size,
            self.num_classes,
            self.n_per_class,
            self.n_test_per_class,
            float(self.noise),
            self.seed,
        )

    @property
    def info(self) -> DatasetInfo:
        images = self._generate()[0].to(torch.float64) / 255  # (N, C, H, W)
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3))
        return DatasetInfo(
            "toy",
            self.channels,
            self._size,
            self.num_classes,
            tuple(round(float(m), 4) for m in mean),
            tuple(round(float(s), 4) for s in std),
            tuple(f"class_{c}" for c in range(self.num_classes)),
        )

    def load(self, root: Path, download: bool) -> RawSplits:
        return RawSplits(*self._generate(), origin=f"generated {self!r}")
