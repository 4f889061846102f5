"""ConvNet, the standard dataset-distillation backbone (Gidaris & Komodakis 2018, as used by DC/DSA/DM/MTT/HaBa).

``depth`` blocks of conv3x3 (padding 1) -> norm -> act -> 2x2 pool, then one linear layer on the flattened
maps. Defaults: width 128, depth 3, instance norm, ReLU, average pooling. Feature maps shrink by
floor-halving: 28x28 -> 3x3 and 32x32 -> 4x4 at depth 3.
"""

from __future__ import annotations

import math

from torch import nn

from haba_core.nets.layers import FeatureNet, feature_shape, make_act, make_norm, make_pool
from haba_core.nets.registry import NETS


@NETS.register("convnet")
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
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for _ in range(depth):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), make_norm(norm, width), make_act(act), make_pool(pool)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.feature_map_shape = feature_shape(self.features, channels, im_size)  # (width, h, w)
        self.num_features = math.prod(self.feature_map_shape)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
