"""Differentiable Siamese Augmentation (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
Augmentation", ICML 2021), split into *sample parameters* and *apply* (kornia / torchvision v2 style).

The siamese trick: one parameter draw is applied to the real and to the synthetic batch, so both see the
same transformation and the matching loss compares like with like. Here that is explicit and needs no
global RNG reseeding::

    p = sample_dsa_params(strategy, max(len(real), len(syn)), generator, device, im_size)
    real_aug, syn_aug = apply_dsa(real, p), apply_dsa(syn, p)   # row i of each gets transform i

Ops and their official defaults (``ParamDiffAug`` of the DC/DSA/MTT code):

- ``color``: brightness ``x + (u - 0.5)``, saturation ``(x - mean_C) * 2u + mean_C`` (identity on one
  channel), contrast ``(x - mean_CHW) * (u + 0.5) + mean_CHW``; each with its own u ~ U(0, 1).
- ``crop``: integer translation by up to ``round(0.125 * size)`` pixels per axis, zero fill.
- ``cutout``: zero a square of ``round(0.5 * size)`` centred anywhere in the image (clipped at borders).
- ``flip``: horizontal flip with probability 0.5.
- ``scale``: ``sx, sy ~ U(1/1.2, 1.2)`` via ``affine_grid`` / ``grid_sample``.
- ``rotate``: angle ``~ U(-15, 15)`` degrees via ``affine_grid`` / ``grid_sample``.

``mode="single"`` (the official default, ``aug_mode='S'``) applies one op of the strategy, drawn at random
per call; ``mode="multiple"`` (``aug_mode='M'``) applies every op in strategy order. ``batchwise=True``
gives every row the parameters of row 0 (the official code's seeded "batch mode" used while distilling,
where the whole real and synthetic batches share a single transformation).

Every op is arithmetic, a gather or ``grid_sample``, hence differentiable w.r.t. the images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from haba_core.errors import ConfigError, did_you_mean

DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DSA_OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_MODES: tuple[str, ...] = ("single", "multiple")

# Official ParamDiffAug values.
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_PAD = 0.125
CUTOUT = 0.5
FLIP_P = 0.5
SCALE = 1.2
ROTATE_DEG = 15.0


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """``"color_crop"`` -> ``("color", "crop")``; ``""``, ``"none"`` and ``None`` -> ``()``."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return ()
    ops = tuple(s.strip().lower() for s in strategy.split("_"))
    for op in ops:
        if op not in DSA_OPS:
            hint = did_you_mean(op, DSA_OPS)
            raise ConfigError(
                f"Unknown DSA op {op!r} in strategy {strategy!r}.{hint} Valid ops: {', '.join(DSA_OPS)} "
                f"(joined by '_', e.g. {DSA_DEFAULT!r}), or 'none'."
            )
    return ops


@dataclass(frozen=True)
class DSAParams:
    """Per-sample parameters of one DSA draw; row i transforms sample i. Unused ops hold ``None``.

    Shapes (B = ``batch``): brightness/saturation/contrast (B,), shift (B, 2) int64 pixels (dy, dx),
    cutout_center (B, 2) int64 (cy, cx), flip (B,) bool, scale (B, 2) (sx, sy), angle (B,) radians.
    """

    ops: tuple[str, ...]  # the ops this draw applies, in order
    batch: int
    im_size: tuple[int, int]
    brightness: Tensor | None = None
    saturation: Tensor | None = None
    contrast: Tensor | None = None
    shift: Tensor | None = None
    cutout_center: Tensor | None = None
    cutout_size: tuple[int, int] = (0, 0)
    flip: Tensor | None = None
    scale: Tensor | None = None
    angle: Tensor | None = None

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: v for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), Tensor)}

    def to(self, device: torch.device | str) -> DSAParams:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self._tensors().items()})

    def first(self, b: int) -> DSAParams:
        """The parameters of rows ``[0, b)``."""
        if b > self.batch:
            raise ValueError(f"DSA parameters were drawn for {self.batch} samples; cannot apply them to {b}")
        return dataclasses.replace(self, batch=b, **{k: v[:b] for k, v in self._tensors().items()})


def _crop_pad(size: int) -> int:
    return int(size * CROP_PAD + 0.5)


def _cutout_len(size: int) -> int:
    return int(size * CUTOUT + 0.5)


def sample_dsa_params(
    strategy: str | None,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    im_size: int | tuple[int, int] = 32,
    *,
    mode: str = "single",
    batchwise: bool = False,
) -> DSAParams:
    """Draw DSA parameters for ``batch`` samples of size ``im_size`` (H, W) from ``generator``.

    Draws happen on the generator's device (the CPU for ``None``: the global RNG) and move to ``device``.
    The same generator state always gives the same parameters.
    """
    if mode not in DSA_MODES:
        raise ConfigError(f"Unknown DSA mode {mode!r}. Valid: {', '.join(DSA_MODES)}.")
    ops = parse_strategy(strategy)
    h, w = (im_size, im_size) if isinstance(im_size, int) else (int(im_size[-2]), int(im_size[-1]))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    n = 1 if batchwise else batch

    def u(*shape: int) -> Tensor:  # U(0, 1), (n, *shape)
        return torch.rand(n, *shape, generator=generator, device=gen_device)

    def randint(high: Tensor, *shape: int) -> Tensor:  # uniform integers in [0, high), (n, *shape)
        return torch.minimum((u(*shape) * high).long(), high - 1)

    if mode == "single" and len(ops) > 1:
        k = int(torch.rand(1, generator=generator, device=gen_device).item() * len(ops))
        ops = (ops[min(k, len(ops) - 1)],)

    values: dict[str, Tensor] = {}
    extra: dict = {}
    for op in dict.fromkeys(ops):  # an op named twice reuses its parameters
        if op == "color":
            values["brightness"] = (u() - 0.5) * BRIGHTNESS
            values["saturation"] = u() * SATURATION
            values["contrast"] = u() + CONTRAST
        elif op == "crop":
            pads = torch.tensor([_crop_pad(h), _crop_pad(w)], device=gen_device)
            values["shift"] = randint(2 * pads + 1, 2) - pads  # in [-pad, pad]
        elif op == "cutout":
            extra["cutout_size"] = (_cutout_len(h), _cutout_len(w))
            # Centres in [0, size + (1 - len % 2)), as the official code: odd squares may hang off either side.
            highs = torch.tensor([h + 1 - _cutout_len(h) % 2, w + 1 - _cutout_len(w) % 2], device=gen_device)
            values["cutout_center"] = randint(highs, 2)
        elif op == "flip":
            values["flip"] = u() < FLIP_P
        elif op == "scale":
            values["scale"] = u(2) * (SCALE - 1.0 / SCALE) + 1.0 / SCALE
        elif op == "rotate":
            values["angle"] = (u() - 0.5) * 2 * math.radians(ROTATE_DEG)
    if batchwise:
        values = {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in values.items()}
    if device is not None:
        values = {k: v.to(device) for k, v in values.items()}
    return DSAParams(ops=ops, batch=batch, im_size=(h, w), **values, **extra)


def _color(x: Tensor, p: DSAParams) -> Tensor:
    assert p.brightness is not None and p.saturation is not None and p.contrast is not None
    col = (-1, 1, 1, 1)
    x = x + p.brightness.to(x.dtype).view(col)
    mean_c = x.mean(dim=1, keepdim=True)  # (B, 1, H, W); equals x on one channel, so saturation is identity
    x = (x - mean_c) * p.saturation.to(x.dtype).view(col) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * p.contrast.to(x.dtype).view(col) + mean


def _crop(x: Tensor, p: DSAParams) -> Tensor:
    """Translate each image by its (dy, dx) pixels; uncovered pixels are zero."""
    assert p.shift is not None
    b, c, h, w = x.shape
    ph, pw = _crop_pad(h), _crop_pad(w)
    xp = F.pad(x, (pw, pw, ph, ph))  # (B, C, H + 2ph, W + 2pw)
    rows = torch.arange(h, device=x.device).view(1, h) + ph - p.shift[:, :1]  # (B, H) source rows
    cols = torch.arange(w, device=x.device).view(1, w) + pw - p.shift[:, 1:]  # (B, W) source cols
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, xp.shape[3]))  # (B, C, H, W + 2pw)
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _cutout(x: Tensor, p: DSAParams) -> Tensor:
    assert p.cutout_center is not None
    b, _, h, w = x.shape
    lh, lw = p.cutout_size
    top = (p.cutout_center[:, 0] - lh // 2).view(b, 1, 1)
    left = (p.cutout_center[:, 1] - lw // 2).view(b, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= top) & (ys < top + lh) & (xs >= left) & (xs < left + lw)  # (B, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def _flip(x: Tensor, p: DSAParams) -> Tensor:
    assert p.flip is not None
    return torch.where(p.flip.view(-1, 1, 1, 1), x.flip(3), x)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample (B, C, H, W) through (B, 2, 3) affine maps (output -> input coordinates), zero fill."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: Tensor, p: DSAParams) -> Tensor:
    assert p.scale is not None
    zeros = torch.zeros_like(p.scale[:, 0])
    theta = torch.stack(
        [torch.stack([p.scale[:, 0], zeros, zeros], 1), torch.stack([zeros, p.scale[:, 1], zeros], 1)], 1
    )
    return _warp(x, theta)


def _rotate(x: Tensor, p: DSAParams) -> Tensor:
    assert p.angle is not None
    cos, sin, zeros = p.angle.cos(), p.angle.sin(), torch.zeros_like(p.angle)
    theta = torch.stack([torch.stack([cos, sin, zeros], 1), torch.stack([-sin, cos, zeros], 1)], 1)
    return _warp(x, theta)


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def apply_dsa(x: Tensor, params: DSAParams) -> Tensor:
    """Apply a DSA draw to images (b, C, H, W) -> (b, C, H, W), using parameter rows ``[0, b)``.

    Differentiable w.r.t. ``x``. ``b`` may be smaller than ``params.batch`` (the siamese use: the smaller
    of the real and synthetic batches shares the first rows of the larger one's draw).
    """
    if not params.ops:
        return x
    if tuple(x.shape[-2:]) != params.im_size:
        raise ValueError(f"DSA parameters were drawn for {params.im_size} images, got {tuple(x.shape[-2:])}")
    p = params.first(x.shape[0]).to(x.device)  # a no-op when already there
    for op in p.ops:
        x = _APPLY[op](x, p)
    return x


def dsa(
    x: Tensor,
    strategy: str | None = DSA_DEFAULT,
    generator: torch.Generator | None = None,
    *,
    mode: str = "single",
    batchwise: bool = False,
) -> Tensor:
    """Sample parameters for ``x`` (B, C, H, W) and apply them: one-call, non-siamese augmentation."""
    p = sample_dsa_params(
        strategy, x.shape[0], generator, x.device, tuple(x.shape[-2:]), mode=mode, batchwise=batchwise
    )
    return apply_dsa(x, p)


@dataclass(frozen=True)
class DSA:
    """A configured DSA: ``DSA(strategy)(real, syn, generator=g)`` augments all batches with one draw."""

    strategy: str = DSA_DEFAULT
    mode: str = "single"
    batchwise: bool = False

    def __post_init__(self) -> None:
        parse_strategy(self.strategy)
        if self.mode not in DSA_MODES:
            raise ConfigError(f"Unknown DSA mode {self.mode!r}. Valid: {', '.join(DSA_MODES)}.")

    def sample(self, batch: int, generator: torch.Generator | None, device, im_size) -> DSAParams:
        return sample_dsa_params(
            self.strategy, batch, generator, device, im_size, mode=self.mode, batchwise=self.batchwise
        )

    def __call__(self, *batches: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Siamese: row i of every batch gets the same transformation. Each batch is (b_k, C, H, W)."""
        if not batches:
            return []
        ref = batches[0]
        p = self.sample(max(len(b) for b in batches), generator, ref.device, tuple(ref.shape[-2:]))
        return [apply_dsa(b, p) for b in batches]
