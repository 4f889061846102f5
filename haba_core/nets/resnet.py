"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR-style.

BasicBlocks [2, 2, 2, 2] at widths (64, 128, 256, 512); the stem is one 3x3 stride-1 conv with no max pool,
as in the DC/DSA cross-architecture evaluations. ``norm="batchnorm"`` (default) or ``"instancenorm"``
(``GroupNorm(C, C)``, the DC codebase's ResNet18 variant) or any other :func:`make_norm` name.
"""

from __future__ import annotations

from torch import Tensor, nn

from haba_core.nets.layers import FeatureNet, feature_shape, make_act, make_norm
from haba_core.nets.registry import NETS


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual shortcut (1x1 conv + norm when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out)
        self.act1 = make_act(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out)
        self.act2 = make_act(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), make_norm(norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


@NETS.register("resnet18", label="ResNet18")
class ResNet18(FeatureNet):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        norm: str = "batchnorm",
        act: str = "relu",
        width: int = 64,
    ) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=False), make_norm(norm, width)]
        layers.append(make_act(act))
        c_in = width
        for i, c_out in enumerate(widths):
            for j in range(2):
                layers.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, norm, act))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        (self.num_features,) = feature_shape(self.features, channels, im_size)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
