"""Networks for distillation and cross-architecture evaluation: convnet, resnet18, vgg11, alexnet, lenet, mlp.

``create_net(name, channels, num_classes, im_size, **options)``; every net offers ``forward_features``
((B, C, H, W) -> (B, D)), ``forward_head`` ((B, D) -> (B, num_classes)) and ``num_features`` (D). Each module of
this package is imported (its architectures register themselves with ``@NETS.register``), so a new network is one
new file here.
"""

import importlib
import pkgutil

from haba_core.nets.convnet import ConvNet
from haba_core.nets.layers import FeatureNet, make_act, make_norm, make_pool
from haba_core.nets.others import MLP, VGG11, AlexNet, LeNet
from haba_core.nets.registry import NETS, create_net, list_nets, net_options
from haba_core.nets.resnet import ResNet18

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "NETS",
    "AlexNet",
    "ConvNet",
    "FeatureNet",
    "LeNet",
    "MLP",
    "ResNet18",
    "VGG11",
    "create_net",
    "list_nets",
    "make_act",
    "make_norm",
    "make_pool",
    "net_options",
]
