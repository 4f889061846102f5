"""ConvNet, the standard dataset-distillation backbone (Gidaris & Komodakis 2018, as used by DC/DSA/DM/MTT/HaBa).

``depth`` blocks of conv3x3 (padding 1) -> norm -> act -> 2x2 pool, then one linear layer on the flattened
maps. Defaults: width 128, depth 3, instance norm, ReLU, average pooling. Feature maps shrink by
floor-halving: 32x32 -> 4x4 at depth 3.

First-layer padding (``first_padding``). The reference networks (DatasetCondensation's ``ConvNet``, which the
published MNIST / Fashion-MNIST numbers of DC, DSA, DM, KIP and IDC come from) pad the *first* convolution by
3 on single-channel 28x28 inputs, so 28x28 becomes 32x32 after it: 4x4 final maps, 2,048 features at width
128. ``"auto"`` (the default) does exactly that for 1x28x28 inputs and pads by 1 everywhere else;
an integer sets the first padding explicitly (``first_padding=1`` gives the older 3x3-map network,
1,152 features at width 128).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from haba_core.errors import ConfigError
from haba_core.nets.layers import FeatureNet, feature_shape, make_act, make_norm, make_pool
from haba_core.nets.registry import NETS

REFERENCE_PAD_SHAPE = (1, 28, 28)  # (C, H, W) on which the reference ConvNet pads its first conv by 3


def resolve_first_padding(first_padding: int | str, channels: int, im_size: tuple[int, int]) -> int:
    """``"auto"`` -> 3 on 1x28x28 inputs (the reference network), else 1; an int >= 0 is taken as is."""
    if first_padding == "auto":
        return 3 if (int(channels), *tuple(im_size)) == REFERENCE_PAD_SHAPE else 1
    if isinstance(first_padding, bool) or not isinstance(first_padding, int) or first_padding < 0:
        raise ConfigError(f"net.first_padding must be 'auto' or an integer >= 0, got {first_padding!r}")
    return first_padding


class WidePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, state_dict and arithmetic) for the reference first layer's padding of 3.

    Under bfloat16 autocast on CPU it pads explicitly and then convolves without padding (the same output: the
    padding is zeros either way), because oneDNN's bf16 convolution is slow at padding 3. One bf16 training step
    of the evaluation ConvNet-128 on 100 Fashion-MNIST-shaped images with DSA, one thread, side by side
    (``python -m bench.speed --rows pad --out bench/results/speed_pad``): 1.14x eager (330 -> 290 ms), 1.31x
    compiled (277 -> 211 ms). In float32 the explicit pad measured 0.95x, so float32 keeps the plain layer.
    """

    explicit_pad = True  # class switch, for bench/speed.py's side-by-side timing

    def forward(self, x):
        ph, pw = self.padding if isinstance(self.padding, tuple) else (0, 0)
        if (
            self.explicit_pad
            and max(ph, pw) > 1
            and self.padding_mode == "zeros"
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
        ):
            x = F.pad(x, (pw, pw, ph, ph))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return super().forward(x)


@NETS.register("convnet", label="ConvNet")
class ConvNet(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpooling",
        first_padding: int | str = "auto",
    ) -> None:
        super().__init__()
        self.first_padding = resolve_first_padding(first_padding, channels, im_size)
        layers: list[nn.Module] = []
        c_in = channels
        for d in range(depth):
            pad = self.first_padding if d == 0 else 1
            conv = WidePadConv2d if pad > 1 else nn.Conv2d
            layers += [conv(c_in, width, 3, padding=pad), make_norm(norm, width), make_act(act), make_pool(pool)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.feature_map_shape = feature_shape(self.features, channels, im_size)  # (width, h, w)
        self.num_features = math.prod(self.feature_map_shape)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
