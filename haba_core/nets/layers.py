"""Layer factories shared by every network, and the ``FeatureNet`` base class.

The names follow the DatasetCondensation code (Zhao, Mopuri & Bilen, ICLR 2021) that DC, DSA, DM, MTT and
HaBa all evaluate with: ``instancenorm`` is ``GroupNorm(C, C)`` (one group per channel, affine), which
normalizes each image on its own and so keeps gradient matching independent of the batch composition.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from haba_core.errors import ConfigError, did_you_mean

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "instancenorm": lambda c: nn.GroupNorm(c, c, affine=True),
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "layernorm": lambda c: nn.GroupNorm(1, c, affine=True),
    "groupnorm": lambda c: nn.GroupNorm(4 if c % 4 == 0 else 1, c, affine=True),
    "none": lambda c: nn.Identity(),
}

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}

POOL_ENV = "HABA_POOL"


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` (same output, same module type), computed on CPU as one matrix product where that is
    much faster: eager (not under ``torch.compile``, whose own pooling kernel is fused), float32 or bfloat16, NCHW
    contiguous maps of even height and width. Each pair of image rows, read as one row of ``2 W`` values, times a
    fixed ``(2 W, W / 2)`` matrix of 0.25s gives one pooled row. ATen's NCHW pooling loops over outputs; the
    product runs as a blocked GEMM, and its backward and double backward (MTT's unroll, DC's matching) are
    products too. Forward + backward on 150 x 64 x 32 x 32 maps, one thread: bf16 49 -> 6 ms, float32
    53 -> 29 ms; a whole MTT step of the Fashion-MNIST IPC-10 bench cell 1.30x in bf16, 1.13x in float32
    (``python -m bench.speed --rows pool``). Every output is the sum of four inputs times 0.25, accumulated
    in float32 as ATen does, so bf16 results are the same; float32 ones may differ in the last bit (summation
    order). Other layouts (NHWC, CUDA) keep ATen's kernel, which is fast there."""

    # class switch, for side-by-side timing; HABA_POOL=aten starts a process (and its workers) with ATen's kernel
    matmul = os.environ.get(POOL_ENV, "matmul") != "aten"

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__(2, 2, ceil_mode=ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.matmul
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.shape[-1] % 2 == 0
            and x.shape[-2] % 2 == 0
            and x.is_contiguous()
            and not torch.compiler.is_compiling()
        ):
            n, c, h, w = x.shape
            with torch.autocast("cpu", enabled=False):  # in x's own dtype, as ATen's pooling
                return (x.reshape(-1, 2 * w) @ _pool_matrix(w, x.dtype)).view(n, c, h // 2, w // 2)
        return super().forward(x)


@functools.cache
def _pool_matrix(w: int, dtype: torch.dtype) -> Tensor:
    """``(2 w, w / 2)``: input ``i`` of a row pair (``i mod w`` is its column) feeds output ``(i mod w) // 2``."""
    i = torch.arange(2 * w)
    m = torch.zeros(2 * w, w // 2)
    m[i, (i % w) // 2] = 0.25
    return m.to(dtype)


_POOLS: dict[str, Callable[[bool], nn.Module]] = {
    "avgpooling": lambda ceil: AvgPool2x2(ceil_mode=ceil),
    "maxpooling": lambda ceil: nn.MaxPool2d(2, 2, ceil_mode=ceil),
    "none": lambda ceil: nn.Identity(),
}


def _choose(kind: str, name: str, table: dict) -> Callable:
    key = str(name).lower()
    if key not in table:
        raise ConfigError(f"Unknown {kind} {name!r}.{did_you_mean(key, table)} Valid: {', '.join(table)}.")
    return table[key]


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalization over (B, C, H, W) feature maps: instancenorm | batchnorm | layernorm | groupnorm | none."""
    return _choose("norm", norm, _NORMS)(channels)


def make_act(act: str) -> nn.Module:
    """Activation: relu | leakyrelu | sigmoid | gelu (never in place, so double backward stays safe)."""
    return _choose("activation", act, _ACTS)()


def make_pool(pool: str, ceil_mode: bool = False) -> nn.Module:
    """2x2 stride-2 pooling: avgpooling | maxpooling | none. ``ceil_mode`` keeps odd sizes from shrinking."""
    return _choose("pooling", pool, _POOLS)(ceil_mode)


def as_hw(im_size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """``28`` or ``(28, 28)`` -> ``(28, 28)``; also accepts ``(C, H, W)``."""
    if isinstance(im_size, int):
        return (im_size, im_size)
    size = tuple(int(s) for s in im_size)
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"im_size must be an int or (H, W), got {im_size!r}")
    return size  # type: ignore[return-value]


@torch.no_grad()
def feature_shape(module: nn.Module, channels: int, im_size: tuple[int, int]) -> tuple[int, ...]:
    """Output shape (without batch) of ``module`` on one zero image of (channels, *im_size).

    Runs in eval mode (BatchNorm running statistics stay untouched) and restores the training flags.
    Zeros consume no random numbers, so initialisation under ``torch.manual_seed`` stays deterministic.
    """
    flags = [m.training for m in module.modules()]
    module.eval()
    try:
        out = module(torch.zeros(1, channels, *im_size))
    except (RuntimeError, ValueError) as e:  # e.g. a 0x0 map, or a norm over a single value
        raise ConfigError(
            f"{type(module).__name__} cannot take {channels}x{im_size[0]}x{im_size[1]} inputs: {e}"
        ) from e
    finally:
        for m, f in zip(module.modules(), flags, strict=True):
            m.training = f
    if out.numel() == 0:
        raise ConfigError(f"{channels}x{im_size[0]}x{im_size[1]} inputs shrink to nothing; use fewer pooling layers")
    return tuple(out.shape[1:])


class FeatureNet(nn.Module):
    """Base for every net: ``forward(x) = forward_head(forward_features(x))`` (timm convention).

    Subclasses set ``self.features`` (images (B, C, H, W) -> feature maps or vectors), ``self.classifier``
    ((B, D) -> (B, num_classes)) and ``self.num_features`` (D).
    """

    features: nn.Module
    classifier: nn.Module
    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, D) flat embedding."""
        return self.features(x).flatten(1)

    def forward_head(self, feats: Tensor) -> Tensor:
        """(B, D) embedding -> (B, num_classes) logits."""
        return self.classifier(feats)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))
