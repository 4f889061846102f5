"""The other cross-architecture networks of the DC/DSA evaluations: VGG11, AlexNet, LeNet and an MLP.

- VGG11: Simonyan & Zisserman, ICLR 2015, configuration A with 3x3 convs -> norm -> act and max pooling.
  Pools use ``ceil_mode`` so odd sizes round up (28 -> 14 -> 7 -> 4 -> 2 -> 1) instead of collapsing to 0;
  on 32x32 this is the usual 32 -> 1. It also keeps the last convs at 2x2, where instance norm is still
  meaningful (at 1x1 it would zero every feature).
- AlexNet: Krizhevsky et al., NeurIPS 2012, the small CIFAR form of the DC codebase (128-192-256-192-192
  channels, 5x5/5x5/3x3/3x3/3x3 convs, three 2x2 max pools, no normalization by default).
- LeNet: LeCun et al., 1998 (conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> fc 84 -> classes); the
  first conv pads by 2 on inputs smaller than 32 so 28x28 and 32x32 both reach 16x5x5.
- MLP: flatten -> 128 -> 128 -> classes with ReLU.

Every classifier size comes from a dummy forward at construction, never from hand-computed constants.
"""

from __future__ import annotations

import math

from torch import nn

from haba_core.nets.layers import FeatureNet, feature_shape, make_act, make_norm, make_pool
from haba_core.nets.registry import NETS

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _head(net: FeatureNet, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
    net.num_features = math.prod(feature_shape(net.features, channels, im_size))
    net.num_classes = num_classes
    net.classifier = nn.Linear(net.num_features, num_classes)


@NETS.register("vgg11", label="VGG11")
class VGG11(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "maxpooling",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for v in VGG11_CFG:
            if v == "M":
                layers.append(make_pool(pool, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), make_norm(norm, int(v)), make_act(act)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        _head(self, channels, num_classes, im_size)


@NETS.register("alexnet", label="AlexNet")
class AlexNet(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        norm: str = "none",
        act: str = "relu",
        pool: str = "maxpooling",
    ) -> None:
        super().__init__()
        # (out channels, kernel, pool after)
        spec = [(128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True)]
        layers: list[nn.Module] = []
        c_in = channels
        for c_out, k, pooled in spec:
            layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), make_norm(norm, c_out), make_act(act)]
            if pooled:
                layers.append(make_pool(pool))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        _head(self, channels, num_classes, im_size)


@NETS.register("lenet", label="LeNet")
class LeNet(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        act: str = "relu",
        pool: str = "maxpooling",
    ) -> None:
        super().__init__()
        pad = 2 if min(im_size) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad),
            make_act(act),
            make_pool(pool),
            nn.Conv2d(6, 16, 5),
            make_act(act),
            make_pool(pool),
            nn.Flatten(),
        )
        (flat,) = feature_shape(self.features, channels, im_size)
        self.features.extend([nn.Linear(flat, 120), make_act(act), nn.Linear(120, 84), make_act(act)])
        self.num_features = 84
        self.num_classes = num_classes
        self.classifier = nn.Linear(84, num_classes)


@NETS.register("mlp", label="MLP")
class MLP(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        width: int = 128,
        act: str = "relu",
    ) -> None:
        super().__init__()
        d_in = channels * im_size[0] * im_size[1]
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(d_in, width), make_act(act), nn.Linear(width, width), make_act(act)
        )
        self.num_features = width
        self.num_classes = num_classes
        self.classifier = nn.Linear(width, num_classes)
